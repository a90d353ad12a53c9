"""``cmrqc-segmenter``: consume cmrqc.volumes.v1, publish cmrqc.segmentations.v1.

Settings come from the environment (``CMRQC_SEGMENTER_*``, see ``cmrqc settings``); the
command line can override the model and stop conditions (for tests and one-off runs).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import torch

from cmrqc_segmenter import __version__
from cmrqc_segmenter.checkpoints import load_model
from cmrqc_segmenter.service import SegmentationHandler
from cmrqc_segmenter.settings import SegmenterSettings
from cmrqc_shared.blobs import open_blob_store
from cmrqc_shared.bus import RunStats, StreamRunner
from cmrqc_shared.events import ProducerInfo, VolumeReady
from cmrqc_shared.logs import configure_logging

SERVICE_NAME = "segmenter"
logger = logging.getLogger(__name__)


def _setup_argparser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmrqc-segmenter", description="Segment every volume on cmrqc.volumes.v1."
    )
    parser.add_argument("--model", default=None, help="overrides CMRQC_SEGMENTER_MODEL")
    parser.add_argument("--max-records", type=int, default=None, help="stop after N records")
    parser.add_argument("--timeout-s", type=float, default=None, help="stop after N seconds")
    parser.add_argument(
        "--idle-timeout-s", type=float, default=None, help="stop after N seconds without input"
    )
    return parser


def build_runner(settings: SegmenterSettings) -> StreamRunner[VolumeReady]:
    """The runner of this service, wired to its handler (loads the model and blob store)."""
    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    segmenter = load_model(
        settings.model,
        device=settings.device,
        precision=settings.precision,
        max_slices_per_forward=settings.max_slices_per_forward,
    )
    producer = ProducerInfo(
        service=SERVICE_NAME, version=__version__, instance=settings.runner.instance_id
    )
    blobs = open_blob_store(settings.blobs.resolved_url(), ttl_seconds=settings.blobs.ttl_seconds)
    handler = SegmentationHandler(
        segmenter, blobs, producer, micro_batch_volumes=settings.micro_batch_volumes
    )
    logger.info(
        "model loaded",
        extra={
            "model_name": segmenter.identity.name,
            "model_version": segmenter.identity.version,
            "artifact_sha256": segmenter.identity.artifact_sha256,
            "device": str(segmenter.device),
            "precision": segmenter.precision,
        },
    )
    return StreamRunner(
        service=producer,
        input_type=VolumeReady,
        handler=handler.handle,
        batch_handler=handler.handle_batch,
        kafka=settings.kafka,
        settings=settings.runner,
    )


def main(args: Sequence[str] | None = None) -> int:
    """Run the segmenter until SIGTERM (or a stop condition); returns the exit code."""
    options = _setup_argparser().parse_args(args)
    settings = SegmenterSettings()
    if options.model is not None:
        settings = settings.model_copy(update={"model": options.model})
    configure_logging(SERVICE_NAME, settings.log_level, settings.log_format)
    runner = build_runner(settings)
    runner.install_signal_handlers()
    stats: RunStats = runner.run(
        max_records=options.max_records,
        timeout_s=options.timeout_s,
        idle_timeout_s=options.idle_timeout_s,
    )
    logger.info("segmenter stopped", extra={"records_in": stats.records_in})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
