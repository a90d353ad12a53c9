"""``cmrqc synth`` (write synthetic studies) and ``cmrqc simulate`` (push them like a PACS)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from cmrqc_shared.datasets.splits import ALL_RANGES, DEMO, SeedRange
from cmrqc_shared.simulator import push_studies, study_failed


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``synth`` and ``simulate`` to ``cmrqc``."""
    synth = subparsers.add_parser(
        "synth", help="write synthetic short-axis CMR studies (DICOM + NIfTI ground truth)"
    )
    synth.add_argument("--out", type=Path, required=True, help="output folder")
    synth.add_argument("--studies", type=int, default=1)
    synth.add_argument("--seed-start", type=int, default=DEMO.start)
    synth.add_argument("--enhanced", action="store_true", help="Enhanced MR multi-frame files")
    synth.add_argument("--clean", action="store_true", help="no artefacts")
    synth.add_argument("--figure", type=Path, default=None, help="also write an example page")
    synth.set_defaults(handler=_synth)

    simulate = subparsers.add_parser(
        "simulate", help="push synthetic studies by C-STORE, one association per study"
    )
    simulate.add_argument("--studies", type=int, default=1)
    simulate.add_argument("--rate", type=float, default=1.0, help="studies per second")
    simulate.add_argument("--to", required=True, metavar="HOST:PORT")
    simulate.add_argument("--called-aet", default="CMRQC")
    simulate.add_argument("--calling-aet", default="CMRQC-SIM")
    simulate.add_argument("--seed-start", type=int, default=DEMO.start)
    simulate.add_argument("--enhanced", action="store_true")
    simulate.add_argument("--json", action="store_true", help="print a JSON summary")
    simulate.set_defaults(handler=_simulate)

    demo = subparsers.add_parser(
        "demo", help="the whole pipeline on local defaults: PACS push in, QC results out"
    )
    demo.add_argument("--studies", type=int, default=4)
    demo.add_argument("--rate", type=float, default=0.5, help="studies per second")
    demo.add_argument("--with-rca", action="store_true", help="also run the RCA labeller")
    demo.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for results")
    demo.add_argument(
        "--seed-start", type=int, default=None, help="default: after the last demo run's seeds"
    )
    demo.add_argument("--json", action="store_true", help="print a JSON summary")
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from cmrqc_cli.demo import print_summary, run_demo

    summary = run_demo(
        studies=args.studies,
        rate_per_s=args.rate,
        with_rca=args.with_rca,
        timeout_s=args.timeout,
        as_json=args.json,
        seed_start=args.seed_start,
    )
    print_summary(summary, args.json)
    complete = summary["qc_results"] == summary["expected_results"]
    clean_exit = all(code == 0 for code in summary["service_exit_codes"].values())
    return 0 if complete and clean_exit and not summary["studies_failed_to_send"] else 1


def _seed_range_name(seed: int) -> str:
    owner: SeedRange | None = next((r for r in ALL_RANGES if seed in r), None)
    return f"{owner.purpose}/{owner.split}" if owner else "outside every declared range"


def _synth(args: argparse.Namespace) -> int:
    from cmrqc_shared.synth import SynthConfig, render_study, write_example_page, write_study

    config = SynthConfig.clean_config() if args.clean else SynthConfig()
    seeds = range(args.seed_start, args.seed_start + args.studies)
    print(f"seeds {seeds.start}..{seeds.stop - 1} ({_seed_range_name(seeds.start)})")
    for seed in tqdm(seeds, desc="synth", unit="study"):
        study = render_study(seed, config)
        write_study(study, args.out / f"study-{seed:06d}", enhanced=args.enhanced)
    if args.figure:
        write_example_page(list(seeds)[:4], args.figure, config=config)
        print(f"wrote {args.figure}")
    print(f"wrote {args.studies} studies to {args.out}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    host, _, port_text = args.to.rpartition(":")
    summary = push_studies(
        studies=args.studies,
        rate_per_s=args.rate,
        host=host,
        port=int(port_text),
        called_aet=args.called_aet,
        calling_aet=args.calling_aet,
        seed_start=args.seed_start,
        enhanced=args.enhanced,
    )
    failures = [s for s in summary if study_failed(s)]
    if args.json:
        print(json.dumps({"studies": summary, "failed": len(failures)}, indent=2))
    else:
        print(f"sent {len(summary)} studies, {len(failures)} with failures")
    return 1 if failures else 0
