"""Experiment (not part of the service): multi-atlas consensus beside the RCA maximum.

For each evaluation case (``evaluation.evaluation_cases``), the engine registers the test image
to the references exactly as ``RcaEstimator.estimate`` does. Then, besides the usual estimate
(the maximum Dice over the ``score_keep`` best-registered references), the verified labels of
the best-registered references are carried into the test grid along the same transforms
(trilinearly splatted: each reference field pixel lands where its transform maps it), their
label distributions are averaged and arg-maxed into a consensus segmentation C, and
Dice(S, C) is the "consensus" estimate (over the 8 best: ``consensus``; over the 3 best:
``consensus3``). One JSON line per case; resumable.

Usage (the figures in ``services/rca-labeller/README.md``)::

    uv run python services/rca-labeller/experiments/consensus.py --split val --scans 40 \
        --out out/rca-labeller/consensus-val.jsonl
    uv run python services/rca-labeller/experiments/consensus.py --split test --scans 40 \
        --skip-scans 120 --out out/rca-labeller/consensus-test121.jsonl

The rules that decided what to make of them are in ``docs/preregistration.txt``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cmrqc_rca_labeller.engine import (
    CLASS_NAMES,
    EngineConfig,
    ReferenceBank,
    Transforms,
    _plane_coordinates,
    propagate_and_score,
)
from cmrqc_rca_labeller.evaluation import evaluation_cases
from cmrqc_rca_labeller.paths import default_cache_dir
from cmrqc_rca_labeller.prepare import PreparedTest, prepare_test, test_to
from cmrqc_rca_labeller.rca import RcaEstimator
from cmrqc_rca_labeller.references import load_reference_set
from cmrqc_shared.datasets.splits import QC_TEST, QC_VAL
from cmrqc_shared.metrics import dice_per_class


def splat_labels(
    bank: ReferenceBank, transforms: Transforms, test: PreparedTest, references: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Votes ``[R, 4, k, rows, cols]`` and weights ``[R, k, rows, cols]``: each reference's
    verified labels pushed into the test grid along its transform (trilinear splat)."""
    planes = _plane_coordinates(bank, transforms, "field", test)
    _, slices, rows, cols = test.segmentation[0].shape
    votes = torch.zeros(len(references), 4, slices, rows, cols, dtype=torch.float64)
    weight = torch.zeros(len(references), slices, rows, cols, dtype=torch.float64)
    for slot, reference in enumerate(references):
        index = torch.nonzero(bank.plane_ref == reference).squeeze(1)
        grid = planes.grid[index]  # [p, F, F, 2]: normalised (x, y) in the test
        x = ((grid[..., 0] + 1) * cols - 1) / 2
        y = ((grid[..., 1] + 1) * rows - 1) / 2
        z = planes.z_index[index].view(-1, 1, 1).expand_as(x)
        onehot = F.one_hot(bank.labels[index].long(), 4).double()  # [p, F, F, 4]
        x0, y0, z0 = x.floor(), y.floor(), z.floor()
        for dz in (0, 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    xi, yi, zi = x0 + dx, y0 + dy, z0 + dz
                    share = (1 - (x - xi).abs()) * (1 - (y - yi).abs()) * (1 - (z - zi).abs())
                    inside = (
                        (xi >= 0)
                        & (xi < cols)
                        & (yi >= 0)
                        & (yi < rows)
                        & (zi >= 0)
                        & (zi < slices)
                        & (share > 0)
                    )
                    flat = (zi[inside].long() * rows + yi[inside].long()) * cols + xi[inside].long()
                    amount = share[inside].double()
                    weight[slot].view(-1).index_add_(0, flat, amount)
                    for label in range(4):
                        votes[slot, label].view(-1).index_add_(
                            0, flat, amount * onehot[..., label][inside]
                        )
    return votes, weight


def consensus_dice(
    segmentation: np.ndarray, votes: torch.Tensor, weight: torch.Tensor, count: int
) -> dict[str, float]:
    """Dice of the segmentation against the arg-max of the first ``count`` references' mean
    label distribution (test voxels no reference reaches count as background)."""
    distribution = votes[:count] / weight[:count].clamp_min(1e-9).unsqueeze(1)
    distribution[:, 0][weight[:count] <= 1e-6] = 1.0
    consensus = distribution.mean(0).argmax(0).numpy().astype(np.uint8)
    return dice_per_class(segmentation, consensus).model_dump()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("val", "test"), required=True)
    parser.add_argument("--scans", type=int, required=True)
    parser.add_argument("--skip-scans", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="JSON lines (appended)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = EngineConfig(device="cpu")
    references = load_reference_set(None, 100, cache_dir=default_cache_dir())
    bank = ReferenceBank.build(references.references, config)
    estimator = RcaEstimator(bank, config)
    split = QC_VAL if args.split == "val" else QC_TEST
    done = set()
    if args.out.exists():
        done = {json.loads(line)["case_id"] for line in args.out.open()}
    with args.out.open("a") as handle:
        for case in evaluation_cases(args.scans, split=split, skip_scans=args.skip_scans):
            if case.case_id in done:
                continue
            started = time.perf_counter()
            truth = dice_per_class(case.segmentation, case.truth).model_dump()
            test = test_to(
                prepare_test(case.image, case.segmentation, grid_mm=bank.grid_mm), bank.device
            )
            registration = estimator.register(test)  # as RcaEstimator.estimate registers
            refined, transforms = registration.bank, registration.transforms
            ranked = registration.similarity.argsort(descending=True)
            kept = ranked[: config.score_keep].tolist()
            with torch.no_grad():
                dice = propagate_and_score(refined, transforms, test).dice
                votes, weight = splat_labels(refined, transforms, test, kept)
            segmentation = test.segmentation[0].argmax(0).numpy().astype(np.uint8)
            maximum = dict(zip(CLASS_NAMES, dice[kept].max(0).values.tolist(), strict=True))
            consensus3 = consensus_dice(segmentation, votes, weight, 3)
            row = {
                "case_id": case.case_id,
                "family": case.family,
                "true": truth,
                "rca": maximum,
                "consensus": consensus_dice(segmentation, votes, weight, len(kept)),
                "consensus3": consensus3,
                "seconds": time.perf_counter() - started,
            }
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            sys.stdout.write(
                f"{case.case_id}: true WH {truth['WH']:.3f}, maximum {maximum['WH']:.3f}, "
                f"consensus of 3 {consensus3['WH']:.3f}\n"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
