"""``cmrqc-rca-labeller``: the service process (settings → service → run until SIGTERM).

Settings come from the environment (``CMRQC_RCA_LABELLER_*``, see ``settings``); the
arguments only add stop conditions, so tests and batch jobs can run it to completion.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from cmrqc_rca_labeller.settings import RcaLabellerSettings
from cmrqc_shared.bus.signals import stop_on_signals
from cmrqc_shared.logs import configure_logging

logger = logging.getLogger(__name__)


def _setup_argparser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmrqc-rca-labeller",
        description="Label segmentations with RCA estimates of their Dice, most doubtful first.",
    )
    parser.add_argument("--max-cases", type=int, default=None, help="stop after N cases")
    parser.add_argument("--timeout", type=float, default=None, help="stop after S seconds")
    parser.add_argument(
        "--idle-timeout", type=float, default=None, help="stop after S seconds without work"
    )
    return parser


def main(args: Sequence[str] | None = None) -> int:
    """Run the service; returns the process exit code."""
    options = _setup_argparser().parse_args(args)
    settings = RcaLabellerSettings()
    configure_logging("rca-labeller", settings.log_level, settings.log_format)
    from cmrqc_rca_labeller.service import RcaLabellerService

    service = RcaLabellerService(settings)

    stop_on_signals(service.stop)  # not in the main thread (tests): stop conditions end it
    try:
        stats = service.run(
            max_cases=options.max_cases,
            timeout_s=options.timeout,
            idle_timeout_s=options.idle_timeout,
        )
    finally:
        service.close()
    logger.info(
        "rca labeller stopped",
        extra={
            "labelled": stats.labelled,
            "dead_lettered": stats.dead_lettered,
            "retried": stats.retried,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
