"""``cmrqc`` subcommands of the ingest package: ``ingest-dir`` and ``import-nifti``.

Both publish to the Kafka and blob store named by the ingest settings (``CMRQC_INGEST_*``).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from cmrqc_ingest.settings import IngestSettings
from cmrqc_shared.cliutil import verb_subparsers


def _say(text: str = "", *, err: bool = False, end: str = "\n") -> None:
    """Talk to the person at the terminal (stdout; progress and errors on stderr)."""
    stream = sys.stderr if err else sys.stdout
    stream.write(text + end)
    stream.flush()


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``ingest-dir`` and ``import-nifti`` to ``cmrqc``."""
    ingest = subparsers.add_parser(
        "ingest-dir",
        help="feed DICOM folders / .zip files through the ingest assembly (resumable)",
    )
    ingest.add_argument("path", type=Path, help="a folder (recursive) or a .zip")
    ingest.add_argument(
        "--spool-dir",
        type=Path,
        default=None,
        help="spool for this backfill (default: <ingest spool>-backfill)",
    )
    ingest.add_argument(
        "--progress",
        type=Path,
        default=None,
        help="progress file of processed paths (default: inside the spool dir)",
    )
    ingest.add_argument("--restart", action="store_true", help="ignore an earlier progress file")
    ingest.add_argument("--no-topics", action="store_true", help="do not ensure topics first")
    ingest.set_defaults(handler=_ingest_dir)

    nifti = subparsers.add_parser(
        "import-nifti",
        help="publish ACDC / M&Ms / synthetic NIfTI studies (image + labels) as VolumeReady",
    )
    nifti.add_argument("path", type=Path, help="root folder, searched recursively")
    nifti.add_argument("--no-topics", action="store_true", help="do not ensure topics first")
    nifti.set_defaults(handler=_import_nifti)

    bench = verb_subparsers(subparsers, "bench", "benchmarks that print figures side by side")
    ingest_bench = bench.add_parser(
        "ingest", help="ingest service vs DCMTK storescp: instances/s and VolumeReady latency"
    )
    ingest_bench.add_argument("--studies", type=int, default=12)
    ingest_bench.add_argument("--rounds", type=int, default=2)
    ingest_bench.add_argument(
        "--cold",
        action="store_true",
        help="time from the receiver's start (default: one warm-up study is sent first)",
    )
    ingest_bench.add_argument("--json", action="store_true")
    ingest_bench.set_defaults(handler=_bench_ingest)


def _ingest_dir(args: argparse.Namespace) -> int:
    from cmrqc_ingest.backfill import BackfillStats, ingest_dir
    from cmrqc_ingest.pipeline import IngestPipeline
    from cmrqc_ingest.service import ensure_service_topics
    from cmrqc_shared.blobs import open_blob_store
    from cmrqc_shared.bus.publisher import EventPublisher

    base = IngestSettings()
    spool_dir = args.spool_dir or base.spool_dir.with_name(base.spool_dir.name + "-backfill")
    settings = base.model_copy(update={"spool_dir": spool_dir})
    root = args.path.resolve()
    if not root.exists():
        _say(f"no such path: {root}", err=True)
        return 2
    tag = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    progress = args.progress or spool_dir / f"progress-{tag}.txt"
    if args.restart:
        progress.unlink(missing_ok=True)
    if not args.no_topics:
        ensure_service_topics(settings)
    blobs = open_blob_store(settings.blobs.resolved_url(), ttl_seconds=settings.blobs.ttl_seconds)
    with EventPublisher(settings.kafka, client_id="cmrqc-ingest-dir") as publisher:
        pipeline = IngestPipeline(settings, blobs=blobs, publisher=publisher)
        recovered = pipeline.open()
        try:
            if recovered:
                _say(f"recovered {recovered} spooled instance(s) from an earlier run")

            def show(stats: BackfillStats) -> None:
                _say(
                    f"\r{stats.files_seen} files, {stats.stored} stored, {stats.refused} "
                    f"refused, {stats.volumes} volumes",
                    err=True,
                    end="",
                )

            progress.parent.mkdir(parents=True, exist_ok=True)
            stats = ingest_dir(root, pipeline, progress_file=progress, on_progress=show)
        finally:
            pipeline.close()
            blobs.close()
    _say(err=True)
    _say(
        f"{stats.files_seen} files ({stats.files_skipped_done} done earlier): "
        f"{stats.stored} stored, {stats.refused} refused; series: "
        f"{stats.count('published')} published ({stats.volumes} volumes), "
        f"{stats.count('skipped')} skipped, {stats.count('dead-lettered')} dead-lettered, "
        f"{stats.count('duplicate')} already published; progress in {progress}"
    )
    return 1 if stats.count("retry") else 0


def _import_nifti(args: argparse.Namespace) -> int:
    from cmrqc_ingest.nifti_import import NiftiImportError, iter_import
    from cmrqc_ingest.publishing import default_producer
    from cmrqc_ingest.service import ensure_service_topics
    from cmrqc_shared.blobs import open_blob_store
    from cmrqc_shared.bus.publisher import EventPublisher

    settings = IngestSettings()
    if not args.no_topics:
        ensure_service_topics(settings)
    blobs = open_blob_store(settings.blobs.resolved_url(), ttl_seconds=settings.blobs.ttl_seconds)
    count = 0
    try:
        with EventPublisher(settings.kafka, client_id="cmrqc-import-nifti") as publisher:
            for subject, events in iter_import(
                args.path,
                blobs=blobs,
                publisher=publisher,
                producer=default_producer(settings.runner.instance_id),
            ):
                count += 1
                _say(f"{subject.layout} {subject.folder}: {len(events)} volume(s)")
    except NiftiImportError as error:
        _say(f"import failed: {error}", err=True)
        return 1
    finally:
        blobs.close()
    _say(f"imported {count} subject(s)")
    return 0 if count else 1


def _bench_ingest(args: argparse.Namespace) -> int:
    import json

    from cmrqc_ingest.bench import run_ingest_benchmark

    settings = IngestSettings()
    report = run_ingest_benchmark(
        studies=args.studies, rounds=args.rounds, kafka=settings.kafka, warm=not args.cold
    )
    if args.json:
        _say(json.dumps(report, indent=2))
        return 0
    for mode, figures in report["modes"].items():
        latency = figures["last_instance_to_volume_ready_ms"]
        _say(
            f"{mode:>16}: received {figures['received_per_s']:7.1f} inst/s"
            + (
                f"  assembled {figures['assembled_per_s']:7.1f} inst/s"
                f"  last instance -> VolumeReady p50 {latency['p50']:.0f} ms"
                f" p99 {latency['p99']:.0f} ms"
                if figures["assembled_per_s"]
                else ""
            )
        )
    for name, ratio in report["ratios"].items():
        _say(f"{name}: {ratio:.2f}")
    for mode, pairs in report["paired_received_vs_storescp"].items():
        rounds = " ".join(f"{r:.2f}" for r in pairs["per_round"])
        _say(f"{mode} / storescp, round by round: {rounds} (median {pairs['median']:.2f})")
    return 0
