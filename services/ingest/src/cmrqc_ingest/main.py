"""``cmrqc-ingest``: the ingest service process (C-STORE SCP, STOW-RS, assembler).

Settings come from the environment (``CMRQC_INGEST_*``, see ``settings.py``); the few
options here override them for a run, and give tests and benchmarks stop conditions.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

from cmrqc_ingest.service import IngestService
from cmrqc_ingest.settings import IngestSettings
from cmrqc_shared.logs import configure_logging


def _setup_argparser(args: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cmrqc-ingest",
        description="DICOM C-STORE SCP and STOW-RS front door: assembles short-axis cine "
        "series and publishes VolumeReady events.",
    )
    parser.add_argument("--dicom-port", type=int, default=None, help="override DICOM_PORT")
    parser.add_argument("--stow-port", type=int, default=None, help="override STOW_PORT")
    parser.add_argument(
        "--health-port", type=int, default=None, help="override RUNNER__HEALTH_PORT"
    )
    parser.add_argument("--spool-dir", default=None, help="override SPOOL_DIR")
    parser.add_argument("--timeout-s", type=float, default=None, help="stop after this long")
    parser.add_argument(
        "--max-volumes", type=int, default=None, help="stop after this many VolumeReady events"
    )
    parser.add_argument(
        "--idle-timeout-s",
        type=float,
        default=None,
        help="stop when nothing arrived or was pending for this long",
    )
    return parser.parse_args(args)


def build_settings(namespace: argparse.Namespace) -> IngestSettings:
    """Settings from the environment, with the command line's overrides applied."""
    settings = IngestSettings()
    update: dict[str, Any] = {}
    if namespace.dicom_port is not None:
        update["dicom_port"] = namespace.dicom_port
    if namespace.stow_port is not None:
        update["stow_port"] = namespace.stow_port
    if namespace.spool_dir is not None:
        update["spool_dir"] = namespace.spool_dir
    if namespace.health_port is not None:
        update["runner"] = settings.runner.model_copy(update={"health_port": namespace.health_port})
    return (
        IngestSettings.model_validate({**settings.model_dump(), **update}) if update else settings
    )


def main(args: Sequence[str] | None = None) -> int:
    """Run the ingest service until SIGTERM (or a stop condition); returns the exit code."""
    namespace = _setup_argparser(args)
    settings = build_settings(namespace)
    configure_logging("ingest", settings.log_level, settings.log_format)
    # pynetdicom logs every association at INFO; keep its warnings only.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    service = IngestService(settings)
    service.install_signal_handlers()
    service.run(
        timeout_s=namespace.timeout_s,
        max_volumes=namespace.max_volumes,
        idle_timeout_s=namespace.idle_timeout_s,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
