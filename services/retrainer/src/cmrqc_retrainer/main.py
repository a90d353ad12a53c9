"""``cmrqc-retrainer``: the service process (settings → service → run until SIGTERM).

Settings come from the environment (``CMRQC_RETRAINER_*``); the arguments only add stop
conditions, so tests and batch jobs can run it to completion.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from cmrqc_retrainer.settings import RetrainerSettings
from cmrqc_shared.bus.signals import stop_on_signals
from cmrqc_shared.logs import configure_logging

logger = logging.getLogger(__name__)


def _setup_argparser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmrqc-retrainer",
        description="Fine-tune the QC predictor on RCA and ground-truth labels; promote it "
        "through the model registry only when it beats the serving model on the holdout.",
    )
    parser.add_argument("--max-rounds", type=int, default=None, help="stop after N rounds")
    parser.add_argument("--timeout", type=float, default=None, help="stop after S seconds")
    return parser


def main(args: Sequence[str] | None = None) -> int:
    """Run the service; returns the process exit code."""
    options = _setup_argparser().parse_args(args)
    settings = RetrainerSettings()
    configure_logging("retrainer", settings.log_level, settings.log_format)
    from cmrqc_retrainer.service import RetrainerService

    service = RetrainerService(settings)

    stop_on_signals(service.stop)  # not in the main thread (tests): stop conditions end it
    try:
        decisions = service.run(max_rounds=options.max_rounds, timeout_s=options.timeout)
    finally:
        service.close()
    logger.info(
        "retrainer stopped",
        extra={
            "rounds": len(decisions),
            "promoted": sum(d.promoted for d in decisions),
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
