"""``cmrqc-qc-predictor``: consume cmrqc.segmentations.v1, publish cmrqc.qc.v1 and alerts.

Reads top to bottom: settings -> model and blob store -> runner and handler -> hot-swap
watcher -> ``run()``. Settings come from the environment (``CMRQC_QC_PREDICTOR_*``, see
``cmrqc settings``); the command line can override the model and stop conditions.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cmrqc_qc_predictor import __version__
from cmrqc_qc_predictor.artifact import BUILTIN_FAST, QcModel, load_artifact_file
from cmrqc_qc_predictor.hotswap import ModelSlot, ModelWatcher, SwapMetrics
from cmrqc_qc_predictor.predictor import select_device
from cmrqc_qc_predictor.service import QcProcessor
from cmrqc_qc_predictor.settings import QcPredictorSettings
from cmrqc_shared.blobs import open_blob_store
from cmrqc_shared.bus import RunStats, StreamRunner
from cmrqc_shared.events import ProducerInfo, SegmentationReady
from cmrqc_shared.logs import configure_logging
from cmrqc_shared.topics import ensure_namespaced_topics

SERVICE_NAME = "qc-predictor"
logger = logging.getLogger(__name__)


def _setup_argparser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmrqc-qc-predictor",
        description="Predict segmentation quality for every record on cmrqc.segmentations.v1.",
    )
    parser.add_argument("--model", default=None, help="overrides CMRQC_QC_PREDICTOR_MODEL_SOURCE")
    parser.add_argument("--max-records", type=int, default=None, help="stop after N records")
    parser.add_argument("--timeout-s", type=float, default=None, help="stop after N seconds")
    parser.add_argument(
        "--idle-timeout-s", type=float, default=None, help="stop after N seconds without input"
    )
    return parser


def load_initial_model(source: str, device: torch.device) -> QcModel:
    """The model named by ``model_source``: ``builtin`` or a .safetensors path.

    Raises:
        ArtifactError: the artifact is corrupt or incompatible.
        OSError: the file cannot be read.
    """
    path = BUILTIN_FAST if source == "builtin" else Path(source)
    model = load_artifact_file(path)
    model.network.to(device)
    return model


@dataclass
class QcService:
    """The wired service: runner, handler, model slot and (optionally) the hot-swap watcher."""

    runner: StreamRunner[SegmentationReady]
    processor: QcProcessor
    slot: ModelSlot
    watcher: ModelWatcher | None

    def run(
        self,
        *,
        max_records: int | None = None,
        timeout_s: float | None = None,
        idle_timeout_s: float | None = None,
    ) -> RunStats:
        """Start the watcher (catching up on published models), run the runner, stop both."""
        if self.watcher is not None:
            self.watcher.start()
        try:
            return self.runner.run(
                max_records=max_records, timeout_s=timeout_s, idle_timeout_s=idle_timeout_s
            )
        finally:
            if self.watcher is not None:
                self.watcher.stop()


def build_service(settings: QcPredictorSettings, model: QcModel | None = None) -> QcService:
    """Wire the service from its settings (``model`` overrides ``settings.model_source``)."""
    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    device = select_device(settings.device)
    model = model or load_initial_model(settings.model_source, device)
    model.calibration_for(settings.views)  # refuse to start without intervals for the views
    producer = ProducerInfo(
        service=SERVICE_NAME, version=__version__, instance=settings.runner.instance_id
    )
    blobs = open_blob_store(settings.blobs.resolved_url(), ttl_seconds=settings.blobs.ttl_seconds)
    runner: StreamRunner[SegmentationReady] = StreamRunner(
        service=producer,
        input_type=SegmentationReady,
        handler=lambda event, ctx: processor.handle(event, ctx),
        batch_handler=lambda items: processor.handle_batch(items),
        kafka=settings.kafka,
        settings=settings.runner,
    )
    metrics = SwapMetrics(runner.metrics.registry)
    slot = ModelSlot(model, metrics)
    processor = QcProcessor(
        slot=slot,
        blobs=blobs,
        producer=producer,
        device=device,
        thresholds=settings.thresholds,
        coverage=settings.interval_coverage,
        max_batch=settings.max_batch,
        alert_on_uncertain=settings.alert_on_uncertain,
        views=settings.views,
    )
    ensure_namespaced_topics(settings.kafka, client_id=f"{SERVICE_NAME}-admin")
    watcher = None
    if settings.hot_swap:
        watcher = ModelWatcher(
            kafka=settings.kafka,
            model_name=settings.model_name,
            slot=slot,
            blobs=blobs,
            device=device,
            metrics=metrics,
            views=settings.views,
        )
    logger.info(
        "model loaded",
        extra={
            "model_name": model.name,
            "model_version": model.version,
            "architecture": model.architecture,
            "artifact_sha256": model.sha256,
            "device": str(device),
            "views": settings.views,
        },
    )
    return QcService(runner=runner, processor=processor, slot=slot, watcher=watcher)


def main(args: Sequence[str] | None = None) -> int:
    """Run the QC predictor until SIGTERM (or a stop condition); returns the exit code."""
    options = _setup_argparser().parse_args(args)
    settings = QcPredictorSettings()
    if options.model is not None:
        settings = settings.model_copy(update={"model_source": options.model})
    configure_logging(SERVICE_NAME, settings.log_level, settings.log_format)
    service = build_service(settings)
    service.runner.install_signal_handlers()
    stats = service.run(
        max_records=options.max_records,
        timeout_s=options.timeout_s,
        idle_timeout_s=options.idle_timeout_s,
    )
    logger.info(
        "qc-predictor stopped",
        extra={"records_in": stats.records_in, "stopped_because": stats.stopped_because},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
