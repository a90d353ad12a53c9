"""``cmrqc`` subcommands of the QC predictor.

* ``cmrqc train qc --model fast|paper --dataset PATH`` — train, select, calibrate, write the
  artifact, model card and training curve (``--install``: make it the committed fast model);
* ``cmrqc evaluate qc --dataset PATH [--artifact A] [--holdout-family F] [--json]`` — the
  paper's Table 1, interval coverage and figures on the test split; with ``--holdout-family``
  and no ``--artifact`` a model is first trained without family F, then tested on F alone;
  with ``--labels FILE`` (``cmrqc rca-labels``) and no ``--artifact`` a model is first trained
  on those labels (Experiment 2: ``--label-field calibrated_dsc|rca_dsc``; ``true_dsc`` is the
  control, the same cases with the truth), then tested against the true Dice;
* ``cmrqc calibrate qc --artifact A --dataset PATH --views N [--views M …] --out B`` — add
  interval calibrations for predictions averaged over N in-plane views (fitted on the
  validation split), so a service can serve N views (``CMRQC_QC_PREDICTOR_VIEWS``);
* ``cmrqc bench qc [--json]`` — paper vs fast per-case latency, batch 1 and batched;
* ``cmrqc make-qc-dev-dataset --out PATH`` — the small development dataset (``devdata``);
* ``cmrqc make-qc-flood-dataset --source PATH --out PATH`` — a companion dataset of flooded
  segmentations of the same scans (``cmrqc_shared.qcdata.flood_dataset``);
* ``cmrqc publish qc-model --artifact A --version V`` — put an artifact in the blob store and
  announce it on cmrqc.models.v1 (hot-swap).

The verbs are shared with other services (``cmrqc train segmenter`` …): each is found or
created, then the ``qc`` target is added under it. Heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cmrqc_qc_predictor.classes import OUTPUT_CLASSES
from cmrqc_shared.cliutil import SubParsers, verb_subparsers

PACKAGE_DIR = Path(__file__).parent
DOCS_DIR = PACKAGE_DIR.parents[1] / "docs"


def _emit(text: str) -> None:
    sys.stdout.write(text + "\n")


def _training_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="train on the samples of this `cmrqc rca-labels` file, with its labels as targets "
        "(Experiment 2)",
    )
    parser.add_argument(
        "--label-field",
        choices=("calibrated_dsc", "rca_dsc", "top_k_mean_dsc", "true_dsc"),
        default="calibrated_dsc",
        help="which label of --labels to train on (true_dsc: the same cases with the truth)",
    )
    parser.add_argument(
        "--no-aux",
        action="store_true",
        help="fast: without the reference-estimate head (the committed model has none)",
    )
    parser.add_argument("--model", choices=("fast", "paper"), default="fast")
    parser.add_argument(
        "--loss",
        choices=("mse", "l1"),
        default="mse",
        help="fast: the loss on the Dice values (l1 targets the MAE it is judged by)",
    )
    parser.add_argument(
        "--ema",
        type=float,
        default=None,
        metavar="DECAY",
        help="fast: validate and keep an exponential moving average of the weights (e.g. 0.998)",
    )
    parser.add_argument(
        "--distill-from",
        type=Path,
        default=None,
        metavar="ARTIFACT",
        help="fast: mix the targets with this teacher's 8-view average prediction",
    )
    parser.add_argument(
        "--distill-weight",
        type=float,
        default=0.5,
        help="fast: the teacher's share of the targets with --distill-from",
    )
    parser.add_argument("--epochs", type=int, default=None, help="fast: 30, paper: 2")
    parser.add_argument("--batch-size", type=int, default=None, help="fast: 32, paper: 2")
    parser.add_argument("--lr", type=float, default=None, help="fast: 2e-3, paper: 1e-5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-budget-min", type=float, default=None, help="stop after this")
    parser.add_argument("--max-train", type=int, default=None, help="cap training cases")
    parser.add_argument("--max-val", type=int, default=None, help="cap validation cases")
    parser.add_argument("--cache-dir", type=Path, default=None, help="fast-input cache base")
    parser.add_argument("--init", type=Path, default=None, help="fast: fine-tune this artifact")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--version", default="", help="artifact version (default: a timestamp)")


def _repeatable_views(parser: argparse.ArgumentParser, *, required: bool, help: str) -> None:
    """``--views N``, repeatable: numbers of in-plane views (``predictor.view_of``)."""
    parser.add_argument("--views", type=int, action="append", required=required, help=help)


def register(subparsers: SubParsers) -> None:
    """Add the QC predictor's subcommands to ``cmrqc``."""
    train = verb_subparsers(subparsers, "train", "train a model").add_parser(
        "qc", help="train the QC predictor (fast or the paper's 3D ResNet-50)"
    )
    train.add_argument(
        "--dataset",
        type=Path,
        action="append",
        required=True,
        help="QC dataset folder (repeat to train on several as one)",
    )
    train.add_argument("--out", type=Path, default=None, help="default out/qc-predictor/<model>")
    train.add_argument("--holdout-family", default=None, help="train without this family")
    train.add_argument(
        "--install", action="store_true", help="commit as the builtin fast model (+ card, curve)"
    )
    _training_arguments(train)
    train.set_defaults(handler=_train)

    evaluate = verb_subparsers(subparsers, "evaluate", "evaluate a model").add_parser(
        "qc", help="Table 1, coverage and figures on the QC test split"
    )
    evaluate.add_argument(
        "--dataset",
        type=Path,
        action="append",
        required=True,
        help="QC dataset folder (repeat to test on the union of their test splits)",
    )
    evaluate.add_argument(
        "--artifact",
        default=None,
        help="builtin or a .safetensors (default: builtin; with --holdout-family or "
        "--labels: train one first)",
    )
    evaluate.add_argument("--holdout-family", default=None, help="test on this family alone")
    evaluate.add_argument("--out", type=Path, default=None, help="default out/qc-predictor/eval")
    evaluate.add_argument("--max-cases", type=int, default=None, help="seeded test subset")
    evaluate.add_argument("--coverage", type=float, default=0.9)
    evaluate.add_argument(
        "--views",
        type=int,
        default=1,
        help="fast: average over this many in-plane views (1-8; the artifact's intervals for "
        "that many views, else refitted on val)",
    )
    evaluate.add_argument("--threshold", type=float, default=0.7, help="WH pass threshold")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    _training_arguments(evaluate)
    evaluate.set_defaults(handler=_evaluate)

    calibrate = verb_subparsers(subparsers, "calibrate", "calibrate a model").add_parser(
        "qc", help="add interval calibrations for N in-plane views to a fast model artifact"
    )
    calibrate.add_argument("--artifact", default="builtin", help="builtin or a .safetensors")
    calibrate.add_argument(
        "--dataset",
        type=Path,
        action="append",
        required=True,
        help="the QC dataset folder(s) the model was trained on (their validation split)",
    )
    _repeatable_views(calibrate, required=True, help="views to calibrate (2-8, repeatable)")
    calibrate.add_argument(
        "--holdout-family", default=None, help="leave this family out (as the model did)"
    )
    calibrate.add_argument(
        "--out", type=Path, default=None, help="the new artifact (may be the input file)"
    )
    calibrate.add_argument(
        "--install",
        action="store_true",
        help="write it as the builtin fast model (+ card), instead of --out",
    )
    calibrate.add_argument("--seed", type=int, default=0, help="the balanced split's seed")
    calibrate.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    calibrate.add_argument("--json", action="store_true", help="print one JSON object")
    calibrate.set_defaults(handler=_calibrate)

    bench = verb_subparsers(subparsers, "bench", "benchmarks").add_parser(
        "qc", help="paper vs fast per-case latency (batch 1 and batched), CPU and GPU"
    )
    bench.add_argument("--batch", type=int, default=8)
    bench.add_argument("--rounds", type=int, default=3)
    bench.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    bench.add_argument("--device", action="append", default=None, help="cpu, cuda (repeatable)")
    bench.add_argument("--artifact", default="builtin", help="fast model artifact")
    _repeatable_views(
        bench,
        required=False,
        help="also time fast averaged over this many in-plane views (2-8, repeatable)",
    )
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(handler=_bench)

    dev = subparsers.add_parser(
        "make-qc-dev-dataset", help="small QC dataset (classical + corruption families)"
    )
    dev.add_argument("--out", type=Path, required=True)
    dev.add_argument("--train-subjects", type=int, default=400)
    dev.add_argument("--val-subjects", type=int, default=50)
    dev.add_argument("--test-subjects", type=int, default=50)
    dev.set_defaults(handler=_make_dev_dataset)

    flood = subparsers.add_parser(
        "make-qc-flood-dataset",
        help="companion QC dataset of flooded segmentations (same scans, hard-linked)",
    )
    flood.add_argument("--source", type=Path, required=True, help="a QC dataset folder")
    flood.add_argument("--out", type=Path, required=True)
    flood.add_argument("--split", action="append", default=None, help="default: train, val")
    flood.add_argument("--per-scan", type=int, default=2)
    flood.add_argument("--seed", type=int, default=0)
    flood.set_defaults(handler=_make_flood_dataset)

    publish = verb_subparsers(subparsers, "publish", "announce artifacts").add_parser(
        "qc-model", help="store a QC model artifact and announce it on cmrqc.models.v1"
    )
    publish.add_argument("--artifact", type=Path, required=True)
    publish.add_argument("--version", required=True)
    publish.add_argument("--name", default="qc-predictor")
    publish.set_defaults(handler=_publish)


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _train_config(args: argparse.Namespace, out: Path, holdout: str | None) -> Any:
    from cmrqc_qc_predictor.models import FastConfig
    from cmrqc_qc_predictor.training import TrainConfig

    return TrainConfig(
        model=args.model,
        datasets=tuple(args.dataset),
        out=out,
        epochs=args.epochs or (30 if args.model == "fast" else 2),
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        holdout_family=holdout,
        time_budget_s=args.time_budget_min * 60 if args.time_budget_min else None,
        max_train=args.max_train,
        max_val=args.max_val,
        cache_dir=args.cache_dir,
        init=args.init,
        version=args.version,
        fast=FastConfig(aux=not args.no_aux),
        labels=args.labels,
        label_field=args.label_field,
        loss=args.loss,
        ema_decay=args.ema,
        distill_from=args.distill_from,
        distill_weight=args.distill_weight,
    )


def _train(args: argparse.Namespace) -> int:
    import shutil

    from cmrqc_qc_predictor.artifact import BUILTIN_FAST
    from cmrqc_qc_predictor.training import train

    _set_threads(args.threads)
    out = args.out or Path("out/qc-predictor") / args.model
    result = train(_train_config(args, out, args.holdout_family))
    _emit(json.dumps({"artifact": str(result.artifact), **result.card["validation"]}, indent=2))
    if args.install:
        if args.model != "fast":
            _emit("--install applies to the fast model only")
            return 2
        BUILTIN_FAST.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result.artifact, BUILTIN_FAST)
        DOCS_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "model-card.json", BUILTIN_FAST.parent / "qc-fast.card.json")
        shutil.copyfile(out / "model-card.md", DOCS_DIR / "model-card-fast.md")
        shutil.copyfile(out / "training-curve-fast.png", DOCS_DIR / "training-curve-fast.png")
        _emit(f"installed {BUILTIN_FAST}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from cmrqc_qc_predictor.artifact import BUILTIN_FAST, load_artifact_file
    from cmrqc_qc_predictor.evaluation import evaluate
    from cmrqc_qc_predictor.training import train

    _set_threads(args.threads)
    out = args.out or Path("out/qc-predictor") / (
        f"holdout-{args.holdout_family}"
        if args.holdout_family
        else (f"labels-{args.label_field}" if args.labels else "eval")
    )
    artifact = args.artifact
    if artifact is None and (args.holdout_family or args.labels):
        # Train first: without the held-out family, or on the label file (Experiment 2).
        trained = train(_train_config(args, out / "train", args.holdout_family))
        artifact = str(trained.artifact)
    path = BUILTIN_FAST if artifact in (None, "builtin") else Path(artifact)
    model = load_artifact_file(path)
    report = evaluate(
        model,
        args.dataset,
        out,
        seed=args.seed,
        holdout_family=args.holdout_family,
        max_cases=args.max_cases,
        coverage=args.coverage,
        threshold=args.threshold,
        progress=not args.json,
        views=args.views,
    )
    report["artifact"] = str(path)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        _emit(json.dumps(report))
    else:
        _emit(format_table1(report))
    return 0


def format_table1(report: dict[str, Any]) -> str:
    """Table 1 as text, with coverage and the binary statistics."""
    table = report["table1"]
    lines = [
        f"{report['model']['architecture']} {report['model']['version']} on {report['scope']} "
        f"(n = {table['n']}, {report['test_scans']} scans)",
        f"{'class':6} {'all':>16} {'DSC < 0.5':>16} {'DSC >= 0.5':>16} {'coverage':>9}",
    ]
    for name, row in table["mae"].items():
        cells = [
            f"{row[k]['mae']:.3f} ({row[k]['sd']:.3f})" for k in ("all", "dsc_lt_0.5", "dsc_ge_0.5")
        ]
        coverage = report["coverage"]["empirical"][name]
        lines.append(f"{name:6} {cells[0]:>16} {cells[1]:>16} {cells[2]:>16} {coverage:9.3f}")
    binary = table["binary_wh"]
    lines.append(
        f"WH pass/fail at {binary['threshold']} (positive = fail): TPR {binary['tpr']:.3f} "
        f"FPR {binary['fpr']:.3f} accuracy {binary['accuracy']:.3f}"
    )
    lines.append(f"figures: {', '.join(report['figures'].values())}")
    return "\n".join(lines)


def _calibrate(args: argparse.Namespace) -> int:
    from cmrqc_qc_predictor.artifact import (
        BUILTIN_FAST,
        check_view_count,
        has_views,
        load_artifact,
        with_view_calibrations,
    )
    from cmrqc_qc_predictor.data import QcDatasets
    from cmrqc_qc_predictor.evaluation import fit_view_calibration
    from cmrqc_qc_predictor.training import model_card_markdown

    if (args.out is None) == (not args.install):
        raise SystemExit("cmrqc calibrate qc: give either --out or --install")
    _set_threads(args.threads)
    path = BUILTIN_FAST if args.artifact == "builtin" else Path(args.artifact)
    data = path.read_bytes()
    model = load_artifact(data)
    if not has_views(model.architecture):
        raise SystemExit(f"cmrqc calibrate qc: {model.architecture} has no in-plane views")
    try:
        for views in args.views:
            check_view_count(views)
    except ValueError as error:
        raise SystemExit(f"cmrqc calibrate qc: --views must lie in 2..8 ({error})") from error
    dataset = QcDatasets(args.dataset)
    calibrations = {}
    summary: dict[str, Any] = dict(model.card.get("view_calibrations", {}))
    for views in sorted(set(args.views)):
        calibration = fit_view_calibration(
            model,
            dataset,
            views,
            seed=args.seed,
            holdout_family=args.holdout_family,
            progress=not args.json,
        )
        calibrations[views] = calibration
        summary[str(views)] = {
            "split": "val",
            "cases": calibration.size,
            "holdout_family": args.holdout_family,
            "mae": dict(  # the residuals are the absolute errors
                zip(OUTPUT_CLASSES, map(float, calibration.residuals.mean(axis=0)), strict=True)
            ),
            "half_width_90": dict(
                zip(OUTPUT_CLASSES, map(float, calibration.half_widths(0.9)), strict=True)
            ),
        }
    written = with_view_calibrations(data, calibrations, {"view_calibrations": summary})
    out = BUILTIN_FAST if args.install else args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(written)
    if args.install:
        card = {**model.card, "view_calibrations": summary}
        card_json = json.dumps(card, indent=2, sort_keys=True) + "\n"
        (BUILTIN_FAST.parent / "qc-fast.card.json").write_text(card_json)
        (DOCS_DIR / "model-card-fast.md").write_text(model_card_markdown(card))
    if args.json:
        _emit(json.dumps({"artifact": str(out), "view_calibrations": summary}))
    else:
        for views, row in summary.items():
            widths = ", ".join(f"{k} {v:.3f}" for k, v in row["half_width_90"].items())
            _emit(f"{views} views: {row['cases']} validation cases; 90% half-widths {widths}")
        _emit(f"wrote {out}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from cmrqc_qc_predictor.bench import FAST_VIEWS_PREFIX, run_bench

    report = run_bench(
        batch=args.batch,
        rounds=args.rounds,
        threads=args.threads,
        devices=args.device,
        fast_artifact=args.artifact,
        fast_views=tuple(args.views or ()),
    )
    if args.json:
        _emit(json.dumps(report))
        return 0
    for device, results in report["devices"].items():
        _emit(
            f"{device} ({results['device_name']}, {report['threads']} threads, "
            f"OMP_WAIT_POLICY {results['omp_wait_policy']}):"
        )
        models = [name for name in results if name in ("paper", "fast")]
        for model in models + [name for name in results if name.startswith(FAST_VIEWS_PREFIX)]:
            for key, row in results[model].items():
                _emit(
                    f"  {model:5} {key:8} prepare {row['prepare_ms']:8.2f} ms  forward "
                    f"{row['forward_ms']:8.2f} ms  total {row['total_ms']:8.2f} ms per case"
                )
        _emit(f"  paper/fast: {results['ratio_paper_over_fast']}")
        for key, value in results.items():
            if key.startswith("ratio_paper_over_fast_views"):
                _emit(f"  {key.removeprefix('ratio_')}: {value}")
    return 0


def _make_dev_dataset(args: argparse.Namespace) -> int:
    from cmrqc_qc_predictor.devdata import DevDatasetPlan, write_dev_dataset

    plan = DevDatasetPlan(
        train_subjects=args.train_subjects,
        val_subjects=args.val_subjects,
        test_subjects=args.test_subjects,
    )
    written = write_dev_dataset(args.out, plan)
    _emit(f"wrote {written} samples to {args.out}")
    return 0


def _make_flood_dataset(args: argparse.Namespace) -> int:
    from cmrqc_shared.qcdata.flood_dataset import write_flood_dataset

    written = write_flood_dataset(
        args.source,
        args.out,
        splits=tuple(args.split or ("train", "val")),
        per_scan=args.per_scan,
        seed=args.seed,
    )
    _emit(f"{args.out} holds {written} flood samples")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from cmrqc_qc_predictor.artifact import load_artifact, read_metadata
    from cmrqc_qc_predictor.settings import QcPredictorSettings
    from cmrqc_shared.blobs import MediaType, open_blob_store
    from cmrqc_shared.bus.publisher import EventPublisher
    from cmrqc_shared.events import ModelPublished, ProducerInfo, utc_now

    data = args.artifact.read_bytes()
    model = load_artifact(data)  # refuse to announce what the service would refuse to load
    settings = QcPredictorSettings()
    store = open_blob_store(settings.blobs.resolved_url(), ttl_seconds=settings.blobs.ttl_seconds)
    ref = store.put(data, MediaType.SAFETENSORS, retain=True)
    event = ModelPublished.create(
        derived_from=(args.name, args.version, ref.sha256),
        producer=ProducerInfo(service="cmrqc-cli", version="0"),
        model_name=args.name,
        version=args.version,
        artifact=ref,
        architecture=read_metadata(data)["architecture"],
        metrics={
            f"val_mae_{k}": float(v)
            for k, v in model.card.get("validation", {}).get("mae", {}).items()
        },
        provenance={"source": str(args.artifact)},
        promoted_at=utc_now(),
    )
    with EventPublisher(settings.kafka) as publisher:
        publisher.publish(event)
    _emit(f"published {args.name} {args.version} ({ref.sha256[:12]})")
    return 0
