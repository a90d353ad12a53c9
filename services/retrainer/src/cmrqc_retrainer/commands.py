"""The retrainer's ``cmrqc`` subcommands: ``cmrqc retrainer-curve`` (replayed labels, see
``curve``) and ``cmrqc retrainer-live-curve`` (the whole pipeline, see ``live_curve``)."""

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

    live = subparsers.add_parser(
        "retrainer-live-curve",
        help="online learning curve from studies streamed live through every service "
        "(needs `cmrqc infra up`)",
    )
    live.add_argument(
        "--dataset", type=Path, required=True, help="QC dataset (initial model and QC_TEST)"
    )
    live.add_argument("--out", type=Path, default=Path("out/retrainer/live-curve"))
    live.add_argument("--studies", type=int, default=200)
    live.add_argument("--rate", type=float, default=0.2, help="studies per second")
    live.add_argument(
        "--segmenter-model",
        action="append",
        default=None,
        help="one segmenter process per value (builtin or a checkpoint); repeatable",
    )
    live.add_argument("--rca-workers", type=int, default=1, help="RCA labeller processes")
    live.add_argument("--initial-cases", type=int, default=50, help="ground-truth start set")
    live.add_argument("--min-new-labels", type=int, default=150, help="labels per round")
    live.add_argument(
        "--min-holdout", type=int, default=10, help="fewest holdout cases to compare on"
    )
    live.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs per round")
    live.add_argument("--seed-start", type=int, default=None, help="first study seed")
    live.add_argument("--timeout", type=float, default=7200.0, help="seconds")
    live.add_argument(
        "--keep", action="store_true", help="keep the run's labels and registry in Redis"
    )
    live.add_argument("--json", action="store_true", help="print one JSON object")
    live.set_defaults(handler=_live_curve)


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


def _live_curve(args: argparse.Namespace) -> int:
    import signal

    from cmrqc_retrainer.live_curve import LIVE_SEED_START, run_live_curve
    from cmrqc_retrainer.settings import RetrainerSettings

    # SIGTERM unwinds like Ctrl-C: the services this run started are stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = RetrainerSettings()
    summary = run_live_curve(
        dataset_root=args.dataset,
        out=args.out,
        kafka=settings.kafka,
        redis_url=settings.resolved_store_url(),
        studies=args.studies,
        rate_per_s=args.rate,
        segmenter_models=tuple(args.segmenter_model or ["builtin"]),
        rca_workers=args.rca_workers,
        initial_cases=args.initial_cases,
        min_new_labels=args.min_new_labels,
        min_holdout=args.min_holdout,
        epochs=args.epochs,
        seed_start=LIVE_SEED_START if args.seed_start is None else args.seed_start,
        timeout_s=args.timeout,
        keep=args.keep,
    )
    if args.json:
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
    else:
        for point in summary["points"]:
            sys.stdout.write(
                f"{point['serving']}: {point['labels_seen']} labels, final holdout WH MAE "
                f"{point['holdout_wh_mae']}, QC_TEST WH MAE {point['test_wh_mae']:.4f}\n"
            )
        sys.stdout.write(f"wrote {args.out / 'curve.json'} and {args.out / 'curve.png'}\n")
    clean = all(code == 0 for code in summary["service_exit_codes"].values())
    return 0 if clean and summary["rca_labels"] > 0 else 1
