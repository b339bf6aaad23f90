"""Command line: ``python -m freesel_backend <command> ...`` (the ``freesel`` command).

One module per command, each registering itself with :func:`build_parser`: ``select`` and ``report``
(a folder of images), ``serve`` and ``worker`` (the backend), ``project`` (a running backend's
project), ``quickstart`` and ``demo`` (a local Label Studio project).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from ..engine import WeightsError
from .demo import add_demo_command
from .project import add_project_command
from .quickstart import add_quickstart_command
from .report import add_report_command
from .select import add_select_command
from .serve import add_serve_command, add_worker_command

CommandRegistrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

REGISTRARS: list[CommandRegistrar] = [
    add_select_command, add_report_command, add_serve_command, add_worker_command, add_project_command,
    add_quickstart_command, add_demo_command,
]


DESCRIPTION = (
    "FreeSel ranks a pool of images so that labelling them in that order covers the pool early: "
    "on a folder of images (select, report) or as a Label Studio ML backend that puts its picks first in "
    "the labelling queue (serve, worker, project, quickstart, demo)."
)


def build_parser(prog: str = "python -m freesel_backend") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=DESCRIPTION, epilog=f"Each command has its own --help, e.g. {prog} select --help."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    for register in REGISTRARS:
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # the name the user typed: the `freesel` command, or python -m freesel_backend
    args = build_parser("freesel" if Path(sys.argv[0]).name == "freesel" else "python -m freesel_backend").parse_args(
        argv
    )
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.run(args) or 0)
    except (WeightsError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
