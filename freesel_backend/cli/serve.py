"""``serve`` (the web service, with an embedded Redis and workers where no REDIS_URL is set) and
``worker`` (one RQ worker on FreeSel's queues)."""

from __future__ import annotations

import argparse

from ..server.settings import DEFAULT_PORT, QUEUES, SettingsError


def add_serve_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "serve",
        help="run the Label Studio ML backend (gunicorn); embedded Redis + workers when REDIS_URL is unset",
        description="Serve the FreeSel ML backend. Without REDIS_URL, a real Redis (data under MODEL_DIR/redis) "
        "and four worker processes (patterns; rankings; write-outs; cleanups) are started too, so this one "
        "command runs everything.",
    )
    parser.add_argument("--host", default="0.0.0.0", help="bind address (0.0.0.0)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT})")
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn worker processes (2)")
    parser.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from ..server.process import serve

    return serve(args.host, args.port, args.web_workers)


def add_worker_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "worker",
        help="run an RQ worker for FreeSel's queues (REDIS_URL)",
        description=f"Process FreeSel jobs from the queues {', '.join(QUEUES)} of REDIS_URL. Equivalent: "
        f"rq worker --with-scheduler -w rq.worker.SimpleWorker --url $REDIS_URL {' '.join(QUEUES)}",
    )
    parser.add_argument("--burst", action="store_true", help="quit when the queues are empty")
    parser.add_argument(
        "--queues", default=",".join(QUEUES),
        help=f"comma-separated queues to take jobs from, first ones first (default: all, {','.join(QUEUES)})",
    )
    # serve's embedded workers, where the system cannot signal a parent's death: end with serve
    parser.add_argument("--exit-with-parent", type=int, metavar="PID", help=argparse.SUPPRESS)
    parser.set_defaults(run=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    from ..server.process import work

    queues = tuple(name.strip() for name in args.queues.split(",") if name.strip())
    unknown = sorted(set(queues) - set(QUEUES))
    if unknown or not queues:
        raise SettingsError(
            f"--queues: unknown queue(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(QUEUES)}"
        )
    return work(burst=args.burst, queues=queues, exit_with=args.exit_with_parent)
