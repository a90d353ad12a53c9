"""Helpers for packages that add subcommands to ``cmrqc`` (through ``cmrqc.commands``)."""

from __future__ import annotations

import argparse

SubParsers = argparse._SubParsersAction  # type: ignore[type-arg]


def verb_subparsers(subparsers: SubParsers, verb: str, help_text: str) -> SubParsers:
    """The sub-subparsers of a shared verb (``train``, ``evaluate``, ``bench`` …).

    Several packages add targets under the same verb (``cmrqc bench bus``, ``cmrqc bench
    ingest``); the first caller creates the verb, later ones reuse it.
    """
    parser = subparsers.choices.get(verb)
    if parser is None:
        parser = subparsers.add_parser(verb, help=help_text)
        return parser.add_subparsers(dest="target", required=True, metavar="TARGET")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest="target", required=True, metavar="TARGET")
