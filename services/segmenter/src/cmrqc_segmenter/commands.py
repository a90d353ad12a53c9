"""``cmrqc`` subcommands of the segmenter: train, evaluate, bench, export.

Registered through the ``cmrqc.commands`` entry point; ``cmrqc train segmenter``,
``cmrqc evaluate segmenter``, ``cmrqc bench segmenter`` and ``cmrqc export segmenter``.
The verbs are shared with other services (``cmrqc bench bus`` …), so each is found or
created, then the ``segmenter`` target is added under it. Heavy imports happen inside the
handlers: ``cmrqc --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cmrqc_shared.cliutil import SubParsers, verb_subparsers


def _emit(text: str) -> None:
    """Write a line to stdout (the CLI talks to people; services log instead)."""
    sys.stdout.write(text + "\n")


def _register_qc_dataset(subparsers: SubParsers) -> None:
    make = subparsers.add_parser(
        "make-qc-dataset",
        help="segmentations of every quality with their true Dice (QC predictor training data)",
    )
    make.add_argument("--out", type=Path, required=True)
    make.add_argument("--train", type=int, default=400, help="training subjects (2 scans each)")
    make.add_argument("--val", type=int, default=50)
    make.add_argument("--test", type=int, default=50)
    make.add_argument(
        "--checkpoints",
        type=Path,
        default=None,
        help="a `cmrqc train segmenter` output dir: its checkpoints make the unet family",
    )
    make.add_argument("--corruptions-per-scan", type=int, default=6)
    make.add_argument("--seed", type=int, default=0)
    make.set_defaults(handler=_make_qc_dataset)


def _make_qc_dataset(args: argparse.Namespace) -> int:
    from cmrqc_segmenter.qc_dataset import make_qc_dataset

    summary = make_qc_dataset(
        args.out,
        subjects={"train": args.train, "val": args.val, "test": args.test},
        checkpoint_dir=args.checkpoints,
        corruptions_per_scan=args.corruptions_per_scan,
        seed=args.seed,
    )
    for split, figures in summary["splits"].items():
        _emit(
            f"{split}: {figures['scans']} scans, {figures['samples']} samples "
            f"-> {figures['balanced_samples']} balanced; bins before {figures['bins_before']}; "
            f"families {figures['families']}"
        )
    _emit(f"histogram: {summary['histogram_png']}")
    return 0


def register(subparsers: SubParsers) -> None:
    """Add the segmenter's subcommands to ``cmrqc``."""
    _register_qc_dataset(subparsers)
    train = verb_subparsers(subparsers, "train", "train a model").add_parser(
        "segmenter", help="train the U-Net on synthetic subjects (resumable)"
    )
    train.add_argument("--out", type=Path, default=Path("out/segmenter/train"))
    train.add_argument("--steps", type=int, default=None)
    train.add_argument("--batch-size", type=int, default=None)
    train.add_argument("--train-subjects", type=int, default=None)
    train.add_argument("--val-subjects", type=int, default=None)
    train.add_argument("--seed", type=int, default=None)
    train.add_argument(
        "--checkpoint-fractions",
        type=lambda text: tuple(float(f) for f in text.split(",")),
        default=None,
        help="comma-separated fractions of the steps to keep checkpoints at "
        "(default 0.01,0.05,0.2,0.5,1)",
    )
    train.add_argument("--cache-dir", type=Path, default=None)
    train.add_argument("--device", default="auto")
    train.add_argument("--workers", type=int, default=2, help="rendering processes")
    train.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 on a busy machine)"
    )
    train.add_argument("--no-resume", action="store_true", help="start over")
    train.add_argument("--install", action="store_true", help="copy final weights to the package")
    train.set_defaults(handler=_train)

    evaluate = verb_subparsers(subparsers, "evaluate", "evaluate a model").add_parser(
        "segmenter", help="Dice per class on the held-out synthetic test split"
    )
    evaluate.add_argument("--model", default="builtin", help="builtin, .safetensors or TorchScript")
    evaluate.add_argument("--subjects", type=int, default=100, help="SEGMENTER_TEST subjects")
    evaluate.add_argument("--out", type=Path, default=Path("out/segmenter/evaluation"))
    evaluate.add_argument("--cache-dir", type=Path, default=None)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    evaluate.add_argument("--workers", type=int, default=2, help="rendering processes")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument(
        "--model-card",
        action="store_true",
        help="(re)write the committed model's MODEL_CARD.md from this evaluation",
    )
    evaluate.set_defaults(handler=_evaluate)

    bench = verb_subparsers(subparsers, "bench", "benchmarks").add_parser(
        "segmenter", help="per-volume CPU latency, batch 1 vs batched, stage by stage"
    )
    bench.add_argument("--model", default="builtin")
    bench.add_argument("--slices", type=int, default=10)
    bench.add_argument("--matrix", type=int, default=224)
    bench.add_argument("--batch", type=int, default=4, help="volumes per batched call")
    bench.add_argument("--rounds", type=int, default=5)
    bench.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    bench.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(handler=_bench)

    export = verb_subparsers(subparsers, "export", "export artefacts").add_parser(
        "segmenter", help="write a model as a TorchScript archive following the contract"
    )
    export.add_argument("--model", default="builtin")
    export.add_argument("--out", type=Path, required=True)
    export.set_defaults(handler=_export)


def _train(args: argparse.Namespace) -> int:
    import dataclasses
    import shutil

    import torch

    from cmrqc_segmenter.checkpoints import builtin_weights_path
    from cmrqc_segmenter.training import TrainConfig, train

    overrides: dict[str, Any] = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "train_subjects": args.train_subjects,
        "val_subjects": args.val_subjects,
        "seed": args.seed,
        "checkpoint_fractions": args.checkpoint_fractions,
    }
    config = dataclasses.replace(
        TrainConfig(), **{k: v for k, v in overrides.items() if v is not None}
    )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = train(
        config,
        args.out,
        cache_dir=args.cache_dir,
        device=args.device,
        resume=not args.no_resume,
        workers=args.workers,
    )
    assert result is not None  # no stop_after: the run always completes
    if args.install:
        target = builtin_weights_path()
        shutil.copyfile(result.final, target)
        target.chmod(0o644)
        shutil.copyfile(args.out / "summary.json", target.parent / "training_summary.json")
        shutil.copyfile(args.out / "training_curve.png", target.parent / "training_curve.png")
    _emit(
        json.dumps(
            {
                "final": str(result.final),
                "checkpoints": [str(p) for p in result.checkpoints],
                "steps": result.steps,
                "wall_time_s": round(result.wall_time_s, 1),
                "val_dice": result.val_dice,
            },
            indent=2,
        )
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from cmrqc_segmenter.checkpoints import load_model
    from cmrqc_segmenter.evaluation import evaluate_test_split

    segmenter = load_model(args.model, device=args.device, precision=args.precision)
    report = evaluate_test_split(
        segmenter,
        subjects=args.subjects,
        out_dir=args.out,
        cache_dir=args.cache_dir,
        workers=args.workers,
    )
    if args.model_card:
        _write_model_card(report)
    if args.json:
        _emit(json.dumps(report, indent=2))
    else:
        for name, stats in report["dice"].items():
            _emit(
                f"{name:4s} mean {stats['mean']:.3f}  median {stats['median']:.3f}  "
                f"p5 {stats['p5']:.3f}  min {stats['min']:.3f}"
            )
        _emit(f"figures: {', '.join(report['figures'].values())}")
    return 0


def _write_model_card(report: dict[str, Any]) -> None:
    from cmrqc_segmenter.checkpoints import builtin_weights_path
    from cmrqc_segmenter.model_card import render_model_card

    weights = builtin_weights_path()
    training = json.loads((weights.parent / "training_summary.json").read_text())
    command = (
        "uv run cmrqc train segmenter --out out/segmenter/train "
        f"--threads {training.get('torch_threads', 1)} --install"
    )
    (weights.parent / "MODEL_CARD.md").write_text(
        render_model_card(weights, training, report, command)
    )


def _bench(args: argparse.Namespace) -> int:
    from cmrqc_segmenter.bench import run_bench

    report = run_bench(
        model=args.model,
        slices=args.slices,
        matrix=args.matrix,
        batch=args.batch,
        rounds=args.rounds,
        threads=args.threads,
        precision=args.precision,
        device=args.device,
    )
    if args.json:
        _emit(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            _emit(f"{key}: {value}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from cmrqc_segmenter.checkpoints import load_model
    from cmrqc_segmenter.torchscript import export_torchscript

    segmenter = load_model(args.model, device="cpu")
    path = export_torchscript(segmenter, args.out)
    _emit(
        json.dumps({"torchscript": str(path), "contract": json.loads(segmenter.contract.to_json())})
    )
    return 0
