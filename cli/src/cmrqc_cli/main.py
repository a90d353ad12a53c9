"""``cmrqc``: the front door for people.

Core subcommands live here (infra, topics, schemas, settings, blobs, models, bench bus);
each service package adds its own (``cmrqc synth``, ``cmrqc train segmenter`` …) through
the ``cmrqc.commands`` entry-point group, so this package never imports a service and a
service's image never needs another's dependencies.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from cmrqc_cli import commands_core, commands_models, commands_synth

logger = logging.getLogger("cmrqc_cli")

Registrar = Callable[[argparse._SubParsersAction], None]  # type: ignore[type-arg]


def _plugin_registrars() -> list[Registrar]:
    registrars = []
    for entry in entry_points(group="cmrqc.commands"):
        try:
            registrars.append(entry.load())
        except Exception as error:  # a broken plugin must not take the core commands down
            logger.warning("could not load cmrqc command plugin %s: %s", entry.name, error)
    return registrars


def _setup_argparser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmrqc", description="CMR-QC Stream: real-time QC for cardiac MR segmentation."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands_core.register(subparsers)
    commands_synth.register(subparsers)
    commands_models.register(subparsers)
    for registrar in _plugin_registrars():
        registrar(subparsers)
    return parser


def main(args: Sequence[str] | None = None) -> int:
    """Run one ``cmrqc`` subcommand; returns the process exit code."""
    parser = _setup_argparser()
    namespace = parser.parse_args(args)
    logging.basicConfig(
        level=logging.DEBUG if namespace.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for chatty in ("kafka", "pynetdicom"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))
    handler: Callable[[argparse.Namespace], int] = namespace.handler
    return handler(namespace)


if __name__ == "__main__":
    raise SystemExit(main())
