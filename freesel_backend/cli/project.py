"""``project``: status, enable, disable, reselect and the report of a Label Studio project, through
the running backend's project routes; the status answer described for a terminal."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..report.html import write_report
from .backend_client import BackendClient


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
