"""The labeller's ``cmrqc`` subcommands: ``rca``, ``evaluate rca`` and ``bench rca``.

``cmrqc rca --image X --seg Y`` estimates one segmentation's Dice per class offline and
prints JSON. X is a NIfTI file, a DICOM folder (one series; the earliest phase unless
``--trigger-time``), or a ``.npy`` array ``[slices, rows, columns]`` with ``--spacing SLICE
ROW COLUMN`` in mm (its axes are then taken as the patient axes); Y is a NIfTI or ``.npy``
labelmap on the same grid (0 BG, 1 LV, 2 LVM, 3 RVC).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cmrqc_rca_labeller.paths import default_cache_dir
from cmrqc_shared.cliutil import SubParsers, verb_subparsers

DEFAULT_EVALUATION_DIR = Path("out/rca-labeller/evaluate")


def _emit(text: str) -> None:
    """Write a line for the person at the terminal (the CLI's output, not a log)."""
    sys.stdout.write(text + "\n")


def _complain(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _add_reference_options(parser: argparse.ArgumentParser, default_k: int = 100) -> None:
    parser.add_argument(
        "--references",
        type=Path,
        default=None,
        help="your own reference folder (default: the synthetic set)",
    )
    parser.add_argument("--k", type=int, default=default_k, help="synthetic reference count")
    parser.add_argument("--cache-dir", type=Path, default=None, help="prepared-set cache")
    parser.add_argument(
        "--max-references",
        type=int,
        default=None,
        help="references taken through full registration (default: engine default)",
    )
    parser.add_argument("--device", default=None, help="torch device (default: CUDA if any)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def register(subparsers: SubParsers) -> None:
    """Add ``rca``, ``evaluate rca`` and ``bench rca`` to ``cmrqc``."""
    rca = subparsers.add_parser("rca", help="RCA estimate of one segmentation's Dice (JSON)")
    rca.add_argument("--image", type=Path, required=True, help="NIfTI, DICOM folder or .npy")
    rca.add_argument("--seg", type=Path, required=True, help="labelmap: NIfTI or .npy")
    rca.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        metavar=("SLICE", "ROW", "COLUMN"),
        default=None,
        help="voxel spacing in mm, for .npy images",
    )
    rca.add_argument(
        "--trigger-time", type=float, default=None, help="DICOM phase, ms (default: earliest)"
    )
    _add_reference_options(rca)
    rca.set_defaults(handler=_rca)

    labels = subparsers.add_parser(
        "rca-labels", help="RCA labels for a QC dataset split (JSON lines; Experiment 2's input)"
    )
    labels.add_argument("--dataset", type=Path, required=True, help="QC dataset folder")
    labels.add_argument("--split", choices=("train", "val", "test"), default="train")
    labels.add_argument("--max-cases", type=int, default=None, help="seeded subset")
    labels.add_argument("--seed", type=int, default=0)
    labels.add_argument("--out", type=Path, required=True, help="JSON lines (appended, resumable)")
    _add_reference_options(labels)
    labels.set_defaults(handler=_rca_labels)

    evaluate = verb_subparsers(subparsers, "evaluate", "evaluations against ground truth")
    ev = evaluate.add_parser("rca", help="RCA estimate vs true Dice on the QC test split")
    ev.add_argument("--scans", type=int, default=40, help="scans (3 cases each)")
    ev.add_argument(
        "--skip-scans", type=int, default=0, help="start after this many scans of the split"
    )
    ev.add_argument(
        "--split",
        choices=("test", "val", "holdout"),  # evaluation.EVALUATION_SPLITS (a test checks)
        default="test",
        help="QC_TEST (report), QC_VAL (tune settings without touching the test split) or "
        "RCA_HOLDOUT (the second held-out range, for preregistered confirmations)",
    )
    ev.add_argument("--corruptions-per-scan", type=int, default=2)
    ev.add_argument("--threshold", type=float, default=0.7, help="WH pass threshold")
    ev.add_argument("--out", type=Path, default=DEFAULT_EVALUATION_DIR, help="cases + PNG")
    ev.add_argument(
        "--example-png", type=Path, default=None, help="also draw one case's best references"
    )
    ev.add_argument(
        "--fit-calibration",
        type=Path,
        default=None,
        metavar="FILE",
        help="with --split val: fit the correction of the estimate and write it here",
    )
    ev.add_argument(
        "--calibration-form",
        choices=("one-feature", "maxima", "kept"),  # calibration.CALIBRATION_FORMS (tested)
        default="kept",
        help="with --fit-calibration: each class from its own maximum, from all four class "
        "maxima, or also from the kept references' spread and similarity (the committed form)",
    )
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    _add_reference_options(ev)
    ev.set_defaults(handler=_evaluate)

    bench = verb_subparsers(subparsers, "bench", "benchmarks that print figures side by side")
    be = bench.add_parser("rca", help="seconds per RCA case: torch engine vs SimpleITK pairs")
    be.add_argument("--k", type=int, default=100, help="reference set size")
    be.add_argument("--cases", type=int, default=3, help="timed torch cases")
    be.add_argument("--baseline-pairs", type=int, default=3, help="timed SimpleITK pairs")
    be.add_argument("--threads", type=int, default=2, help="CPU threads for both")
    be.add_argument("--max-references", type=int, default=None)
    be.add_argument("--cache-dir", type=Path, default=None)
    be.add_argument("--png", type=Path, default=None, help="also draw the figures here")
    be.add_argument("--json", action="store_true", help="print one JSON object")
    be.set_defaults(handler=_bench)


def _estimator(args: argparse.Namespace, progress: bool = True):  # type: ignore[no-untyped-def]
    import torch

    from cmrqc_rca_labeller.calibration import calibration_for
    from cmrqc_rca_labeller.engine import EngineConfig, ReferenceBank
    from cmrqc_rca_labeller.rca import RcaEstimator
    from cmrqc_rca_labeller.references import load_reference_set

    if args.threads:
        torch.set_num_threads(args.threads)
    reference_set = load_reference_set(
        args.references, args.k, cache_dir=args.cache_dir or default_cache_dir(), progress=progress
    )
    options: dict[str, object] = {"device": args.device}
    if args.max_references:
        options["refine_keep"] = args.max_references
    config = EngineConfig(**options)  # type: ignore[arg-type]
    calibration = calibration_for(reference_set.content_hash)
    bank = ReferenceBank.build(reference_set.references, config)
    return RcaEstimator(bank, config, calibration), reference_set


def _rca(args: argparse.Namespace) -> int:
    from cmrqc_rca_labeller.io import VolumeReadError, read_dicom_folder, read_image, read_labels

    try:
        if args.image.is_dir():
            image = read_dicom_folder(args.image, args.trigger_time)
        else:
            image = read_image(args.image, tuple(args.spacing) if args.spacing else None)
        segmentation = read_labels(args.seg, image)
    except (VolumeReadError, FileNotFoundError) as error:
        _complain(f"cmrqc rca: {error}")
        return 2
    estimator, reference_set = _estimator(args)
    result = estimator.estimate(image, segmentation)
    output = {
        "image": str(args.image),
        "segmentation": str(args.seg),
        "reference_set": reference_set.content_hash,
        **result.as_dict(),
    }
    _emit(json.dumps(output, indent=2))
    return 0


def _rca_labels(args: argparse.Namespace) -> int:
    from cmrqc_rca_labeller.label_dataset import label_dataset

    estimator, reference_set = _estimator(args)
    added = label_dataset(
        estimator,
        args.dataset,
        args.out,
        split=args.split,
        max_cases=args.max_cases,
        seed=args.seed,
    )
    _emit(f"{added} labels added to {args.out} (reference set {reference_set.content_hash[:16]}…)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from cmrqc_rca_labeller.evaluation import EVALUATION_SPLITS, fit_calibration, run_evaluation

    if args.fit_calibration and args.split != "val":
        _complain("--fit-calibration needs --split val: never fit on the test split")
        return 2
    estimator, reference_set = _estimator(args)
    summary, results = run_evaluation(
        estimator,
        args.scans,
        out_dir=args.out,
        corruptions_per_scan=args.corruptions_per_scan,
        threshold=args.threshold,
        split=EVALUATION_SPLITS[args.split],
        skip_scans=args.skip_scans,
    )
    summary = {"reference_set": reference_set.content_hash, **summary}
    if args.fit_calibration:
        from cmrqc_rca_labeller.calibration import CALIBRATION_FORMS

        calibration = fit_calibration(
            results,
            reference_set=reference_set.content_hash,
            fitted_on=f"QC_VAL, {args.scans} scans, {len(results)} cases",
            features=CALIBRATION_FORMS[args.calibration_form],
        )
        calibration.save(args.fit_calibration)
        summary["calibration_written"] = str(args.fit_calibration)
    if args.example_png:
        from cmrqc_rca_labeller.evaluation import evaluation_cases, write_example_png

        case = next(iter(evaluation_cases(1)))
        summary["example_png"] = str(write_example_png(estimator, case, args.example_png))
    if args.json:
        _emit(json.dumps(summary, indent=2))
        return 0
    mae = summary["mae"]
    assert isinstance(mae, dict)
    _emit(f"{summary['cases']} cases, reference set {reference_set.content_hash[:16]}…")
    _emit("MAE  " + "  ".join(f"{k} {v:.3f}" for k, v in mae.items()))
    _emit(f"WH pass/fail accuracy at {args.threshold}: {summary['wh_accuracy']:.3f}")
    _emit(f"scatter: {summary.get('scatter_png')}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from cmrqc_rca_labeller.bench import run_rca_benchmark, write_bench_png

    report = run_rca_benchmark(
        references=args.k,
        cases=args.cases,
        baseline_pairs=args.baseline_pairs,
        threads=args.threads,
        max_references=args.max_references,
        cache_dir=args.cache_dir,
        log=_complain,
    )
    if args.png:
        report["png"] = str(write_bench_png(report, args.png))
    if args.json:
        _emit(json.dumps(report, indent=2))
        return 0
    torch_s = report["torch"]["seconds_per_case"]
    _emit(f"torch engine: {torch_s:.1f} s per case with K = {report['references']}")
    if "baseline" in report:
        base = report["baseline"]
        _emit(
            f"SimpleITK one pair at a time: {base['seconds_per_pair']:.1f} s per pair → "
            f"{base['extrapolated_seconds_per_case']:.0f} s per case (×{report['references']})"
        )
        _emit(f"ratio (baseline / torch): {report['speedup_vs_baseline']}×")
    _emit(f"paper (~{report['paper_seconds_per_case']:.0f} s): {report['speedup_vs_paper']}×")
    return 0
