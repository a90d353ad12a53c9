"""The retrainer's ``cmrqc`` subcommand: ``cmrqc retrainer-curve`` (see ``curve``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cmrqc_shared.cliutil import SubParsers


def register(subparsers: SubParsers) -> None:
    curve = subparsers.add_parser(
        "retrainer-curve",
        help="online learning curve: replay RCA labels through the retrainer, round by round",
    )
    curve.add_argument("--dataset", type=Path, required=True, help="QC dataset folder")
    curve.add_argument(
        "--labels", type=Path, required=True, help="`cmrqc rca-labels` file (train + val)"
    )
    curve.add_argument("--out", type=Path, default=Path("out/retrainer/curve"))
    curve.add_argument("--initial-cases", type=int, default=50, help="ground-truth start set")
    curve.add_argument("--chunk", type=int, default=100, help="labels per round")
    curve.add_argument("--epochs", type=int, default=8, help="fine-tuning epochs per round")
    curve.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    curve.add_argument(
        "--keep", action="store_true", help="keep the simulation's labels and registry in Redis"
    )
    curve.add_argument("--json", action="store_true", help="print one JSON object")
    curve.set_defaults(handler=_curve)


def _curve(args: argparse.Namespace) -> int:
    import torch

    from cmrqc_retrainer.curve import run_curve
    from cmrqc_retrainer.settings import RetrainerSettings

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = RetrainerSettings()
    summary = run_curve(
        dataset_root=args.dataset,
        labels_file=args.labels,
        out=args.out,
        kafka=settings.kafka,
        redis_url=settings.resolved_store_url(),
        initial_cases=args.initial_cases,
        chunk=args.chunk,
        epochs=args.epochs,
        keep=args.keep,
    )
    if args.json:
        sys.stdout.write(json.dumps(summary) + "\n")
        return 0
    for point in summary["points"]:
        sys.stdout.write(
            f"round {point['round']}: {point['labels_seen']} labels, serving {point['serving']}, "
            f"test WH MAE {point['test_wh_mae']:.4f}, holdout WH MAE {point['holdout_wh_mae']}\n"
        )
    sys.stdout.write(f"wrote {args.out / 'curve.json'} and {args.out / 'curve.png'}\n")
    return 0
