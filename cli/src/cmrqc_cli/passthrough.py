"""A pass-through service: VolumeReady in, the same volume reference out, one hop further.

It carries blob references, not pixels, exactly like the real services, and is what the
crash test kills and the bus benchmark measures. Run as
``python -m cmrqc_cli.passthrough --input-topic A --output-topic B``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from cmrqc_shared.bus import Produce, StreamRunner
from cmrqc_shared.events import ProducerInfo, VolumeReady
from cmrqc_shared.logs import configure_logging
from cmrqc_shared.settings import ServiceSettings, service_settings_config
from cmrqc_shared.topics import TopicSpec

SERVICE = ProducerInfo(service="passthrough", version="1")

logger = logging.getLogger(__name__)


class PassthroughSettings(ServiceSettings):
    """Settings of the pass-through service (prefix ``CMRQC_PASSTHROUGH_``)."""

    model_config = service_settings_config("CMRQC_PASSTHROUGH_")


def forward(event: VolumeReady, output_topic: str, fail_marker: str | None) -> list[Produce]:
    """The same volume, re-announced on ``output_topic`` with an id derived from the input.

    A record whose SeriesInstanceUID contains ``fail_marker`` raises (poison-record tests).
    """
    if fail_marker and event.series_instance_uid and fail_marker in event.series_instance_uid:
        raise RuntimeError(f"poison record {event.event_id}")
    forwarded = VolumeReady.create(
        derived_from=(event.event_id, "passthrough"),
        producer=SERVICE,
        causation_id=event.event_id,
        **event.model_dump(
            exclude={
                "event_id",
                "schema_name",
                "schema_version",
                "produced_at",
                "producer",
                "causation_id",
            }
        ),
    )
    return [Produce(forwarded, output_topic)]


def _setup_argparser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmrqc-passthrough", description=__doc__)
    parser.add_argument("--input-topic", required=True)
    parser.add_argument("--output-topic", required=True)
    parser.add_argument("--max-records", type=int, default=None)
    parser.add_argument("--idle-timeout", type=float, default=None, help="s without input")
    parser.add_argument("--fail-marker", default=None, help="raise on series UIDs with this")
    return parser


def main(args: Sequence[str] | None = None) -> int:
    options = _setup_argparser().parse_args(args)
    settings = PassthroughSettings()
    configure_logging(SERVICE.service, settings.log_level, settings.log_format)
    runner: StreamRunner[VolumeReady] = StreamRunner(
        service=SERVICE,
        input_type=VolumeReady,
        input_topic=options.input_topic,
        handler=lambda event, _ctx: forward(event, options.output_topic, options.fail_marker),
        kafka=settings.kafka,
        settings=settings.runner,
        extra_topics=[TopicSpec(options.output_topic, partitions=6)],
    )
    runner.install_signal_handlers()
    stats = runner.run(max_records=options.max_records, idle_timeout_s=options.idle_timeout)
    logger.info("done", extra={"records_in": stats.records_in, "records_out": stats.records_out})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
