"""Experiment (not part of the service): what limits the RCA estimate, from one registration.

Registration depends on the image only (the segmentation is carried along, never used to
place anything), so each scan is registered once and all its segmentations are scored on that
registration; the ``blend`` estimate is the engine's own and equals ``cmrqc evaluate rca``'s
case for case. Besides the evaluation's segmentations, every scan's true labels are scored
too ("truth" family): the estimate's ceiling, where the true Dice is 1. Variants, all on the
same registrations unless they change it:

* ``sdfCAP`` (``--caps``): the segmentation carried between test slices as blended signed
  distance maps (per class, in-plane, clipped to ±CAP mm; the arg-min is the label) instead of
  blended class fractions: shape-based interpolation, which moves a boundary half way where a
  structure grows or shrinks between two slices 6-10 mm apart.
* ``ruleSIGMA,BETA`` (``--rule``): the segmentation's rule instead of its shape: per class, the
  histogram of the test intensities it labelled, times the propagated segmentation blurred by
  SIGMA mm to the power BETA, re-labels each reference (``propagate_rule``).
* ``--same-phase``: only references of the test volume's cardiac phase are registered.
* ``--set FIELD=VALUE``: any ``EngineConfig`` field (e.g. ``ffd_control=13``).
* ``--kept``: every row also carries ``kept``, the references the estimate is taken over
  (most similar first): ``[similarity, Dice BG, LV, LVM, RVC, WH]`` each, and
  ``blend_top3``, the engine's ``top_k_mean_dsc``: estimators and calibrations other than the
  maximum can then be studied without registering again.

What came of them, and the rules written before test cases were run, are in the service's
README and ``docs/preregistration.txt``.

Usage::

    uv run python services/rca-labeller/experiments/propagation.py --split val --scans 40 \
        --out out/rca-labeller/propagation-val.jsonl
    uv run python services/rca-labeller/experiments/propagation.py --split test --scans 160 \
        --skip-scans 360 --caps 10 --threads 1 --out out/rca-labeller/propagation-test361.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from cmrqc_rca_labeller.engine import (
    CLASS_NAMES,
    EngineConfig,
    ReferenceBank,
    Transforms,
    _plane_coordinates,
    _SliceSampler,
    covered_planes,
    gaussian_blur,
    propagate,
    score,
    unseen_segmentation,
)
from cmrqc_rca_labeller.evaluation import EVALUATION_SPLITS, EvaluationCase, evaluation_cases
from cmrqc_rca_labeller.paths import default_cache_dir
from cmrqc_rca_labeller.prepare import PreparedTest, prepare_test, test_to
from cmrqc_rca_labeller.rca import RcaEstimator
from cmrqc_rca_labeller.references import load_reference_set
from cmrqc_shared.metrics import dice_per_class


def signed_distances(test: PreparedTest, cap_mm: float) -> torch.Tensor:
    """Per class and slice, the in-plane signed distance (mm, negative inside) of the test
    segmentation's arg-max labels ``[4, k, rows, cols]``, clipped to ±``cap_mm`` (a class
    absent from a slice is ``+cap_mm`` everywhere)."""
    labels = test.segmentation[0].argmax(0).cpu().numpy()
    dy, dx = test.fine_spacing_mm
    out = np.full((4, *labels.shape), cap_mm, dtype=np.float32)
    for label in range(4):
        for k in range(labels.shape[0]):
            inside = labels[k] == label
            if not inside.any():
                continue
            if inside.all():
                out[label, k] = -cap_mm
                continue
            outside_distance = ndimage.distance_transform_edt(~inside, sampling=(dy, dx))
            inside_distance = ndimage.distance_transform_edt(inside, sampling=(dy, dx))
            out[label, k] = np.clip(outside_distance - inside_distance, -cap_mm, cap_mm)
    return torch.from_numpy(out)


def propagate_shape(
    bank: ReferenceBank, transforms: Transforms, test: PreparedTest, distances: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """As ``engine.propagate``, with signed distances blended instead of class fractions."""
    planes = _plane_coordinates(bank, transforms, "field", test)
    sampled = _SliceSampler(distances.to(bank.device))(planes)  # [P, 4, s, s]
    return sampled.argmin(1).to(torch.uint8), covered_planes(planes, test)


def _blur(stack: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """``engine.gaussian_blur`` of every channel of ``[n, c, rows, cols]``."""
    n, c, rows, cols = stack.shape
    return gaussian_blur(stack.reshape(n * c, rows, cols), sigma_px).reshape(n, c, rows, cols)


def propagate_rule(
    bank: ReferenceBank,
    transforms: Transforms,
    test: PreparedTest,
    reference_images: torch.Tensor,
    *,
    sigma_mm: float,
    beta: float,
    bins: int = 24,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The segmentation's *rule* carried, not only its shape: per class, the histogram of the
    test intensities it labelled (near the heart) is learnt, and each reference plane is
    labelled by that likelihood times the propagated segmentation blurred by ``sigma_mm``
    (a shape prior, to the power ``beta``). A segmentation that follows the image's
    intensities re-segments the reference the same way; its errors come along."""
    seg = test.segmentation[0].permute(1, 0, 2, 3)  # [k, 4, rows, cols]
    image = test.fine[0, 0]  # [k, rows, cols]
    sigma_px = sigma_mm / bank.grid_mm
    prior_test = _blur(seg, sigma_px)
    near = prior_test[:, 1:].sum(1) > 0.02
    edges = torch.linspace(-0.25, 1.5, bins + 1)
    labels = seg.argmax(1)
    likelihood = torch.ones(4, bins)  # Laplace smoothing
    index = torch.bucketize(image[near].clamp(-0.25, 1.5), edges[1:-1])
    likelihood.index_put_((labels[near], index), torch.ones(index.shape), accumulate=True)
    likelihood = likelihood / likelihood.sum(1, keepdim=True)
    planes = _plane_coordinates(bank, transforms, "field", test)
    fractions = _SliceSampler(test.segmentation[0].to(bank.device))(planes)  # [P, 4, F, F]
    prior = _blur(fractions, sigma_px).clamp_min(1e-4)
    ref_index = torch.bucketize(reference_images.clamp(-0.25, 1.5), edges[1:-1])  # [P, F, F]
    log_likelihood = likelihood.log()[:, ref_index].permute(1, 0, 2, 3)  # [P, 4, F, F]
    posterior = log_likelihood + beta * prior.log()
    return posterior.argmax(1).to(torch.uint8), covered_planes(planes, test)


def scans(split: str, count: int, skip: int) -> Iterator[tuple[int, Iterator[EvaluationCase]]]:
    """The evaluation cases, grouped by scan (they come scan by scan)."""
    cases = evaluation_cases(count, split=EVALUATION_SPLITS[split], skip_scans=skip)
    return itertools.groupby(cases, key=lambda case: case.seed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=tuple(EVALUATION_SPLITS), required=True)
    parser.add_argument("--scans", type=int, required=True)
    parser.add_argument("--skip-scans", type=int, default=0)
    parser.add_argument("--caps", type=float, nargs="*", default=[5.0, 10.0, 20.0])
    parser.add_argument("--out", type=Path, required=True, help="JSON lines (appended)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--rule",
        action="append",
        default=[],
        metavar="SIGMA_MM,BETA",
        help="also score rule transfer (propagate_rule) with these settings; repeatable",
    )
    parser.add_argument(
        "--same-phase", action="store_true", help="register only references of the same phase"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="an EngineConfig field (int or float), e.g. ffd_control=13; repeatable",
    )
    parser.add_argument(
        "--kept",
        action="store_true",
        help="also write every kept reference's similarity and Dice, and the top-3 mean",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides: dict[str, float | int] = {}
    for item in args.set:
        name, _, value = item.partition("=")
        overrides[name] = type(getattr(EngineConfig(), name))(value)
    config = EngineConfig(device="cpu", **overrides)  # type: ignore[arg-type]
    references = load_reference_set(None, 100, cache_dir=default_cache_dir())
    bank = ReferenceBank.build(references.references, config)
    estimators = {phase: RcaEstimator(bank, config) for phase in ("ED", "ES")}
    if args.same_phase:
        for phase in estimators:
            chosen = [r for r in references.references if r.reference_id.endswith(phase)]
            estimators[phase] = RcaEstimator(ReferenceBank.build(chosen, config), config)
    reference_by_id = {r.reference_id: r for r in references.references}
    device = bank.device
    done = set()
    if args.out.exists():
        done = {json.loads(line)["case_id"] for line in args.out.open()}
    with args.out.open("a") as handle:
        for _, group in scans(args.split, args.scans, args.skip_scans):
            cases: list[EvaluationCase] = list(group)
            first = cases[0]
            truth_case = EvaluationCase(
                case_id=f"{first.seed}-{first.phase}-truth",
                seed=first.seed,
                phase=first.phase,
                family="truth",
                image=first.image,
                segmentation=first.truth,
                truth=first.truth,
                pixel_spacing_mm=first.pixel_spacing_mm,
            )
            cases.append(truth_case)
            if all(case.case_id in done for case in cases):
                continue
            tests = [
                test_to(prepare_test(case.image, case.segmentation, grid_mm=bank.grid_mm), device)
                for case in cases
            ]
            started = time.perf_counter()
            registration = estimators[first.phase].register(tests[0])  # the image's alone
            refined, transforms = registration.bank, registration.transforms
            kept = registration.similarity.argsort(descending=True)[: config.score_keep]
            seconds = time.perf_counter() - started
            if args.rule:
                reference_images = torch.from_numpy(
                    np.concatenate([reference_by_id[i].image for i in refined.ids])
                )
            for case, prepared in zip(cases, tests, strict=True):
                with torch.no_grad():
                    unseen = unseen_segmentation(refined, transforms, prepared)
                    labels, covered = propagate(refined, transforms, prepared)
                    estimates = {"blend": score(refined, labels, covered, unseen)}
                    for cap in args.caps:
                        distances = signed_distances(prepared, cap)
                        labels, covered = propagate_shape(refined, transforms, prepared, distances)
                        estimates[f"sdf{cap:g}"] = score(refined, labels, covered, unseen)
                    for setting in args.rule:
                        sigma, beta = (float(v) for v in setting.split(","))
                        labels, covered = propagate_rule(
                            refined,
                            transforms,
                            prepared,
                            reference_images,
                            sigma_mm=sigma,
                            beta=beta,
                        )
                        estimates[f"rule{sigma:g},{beta:g}"] = score(
                            refined, labels, covered, unseen
                        )
                true = dice_per_class(case.segmentation, case.truth).model_dump()
                maxima = {
                    name: dict(zip(CLASS_NAMES, dice[kept].max(0).values.tolist(), strict=True))
                    for name, dice in estimates.items()
                }
                row = {
                    "case_id": case.case_id,
                    "family": case.family,
                    "true": true,
                    "registration_seconds": seconds,
                    **maxima,
                }
                if args.kept:
                    blend = estimates["blend"][kept]
                    top = blend.sort(0, descending=True).values[: config.top_k].mean(0)
                    row["blend_top3"] = dict(zip(CLASS_NAMES, top.tolist(), strict=True))
                    similarity = registration.similarity[kept].tolist()
                    row["kept"] = [
                        [round(float(v), 5) for v in [sim, *dice]]
                        for sim, dice in zip(similarity, blend.tolist(), strict=True)
                    ]
                handle.write(json.dumps(row) + "\n")
                handle.flush()
                shown = ", ".join(f"{name} {value['WH']:.3f}" for name, value in maxima.items())
                sys.stdout.write(f"{case.case_id}: true WH {true['WH']:.3f}; {shown}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
