"""When quickstart and the demo call a project ranked: the ranking is what Label Studio serves."""

from __future__ import annotations

from typing import Any

from freesel_backend.cli.quickstart import ranked_since

RANKED_AT = "2026-11-30T10:00:00+00:00"
LIVE = {"model_version": "freesel-0001", "switched_at": RANKED_AT, "ranking": 1, "written_at": RANKED_AT}


def status(**changes: Any) -> dict[str, Any]:
    idle = {"queued": 0, "running": 0, "scheduled": 0}
    base = {
        "tasks": 10, "patterns_pending": 0, "ranked": 10, "last_selection_at": RANKED_AT, "live": LIVE,
        "writeout": {"state": "done"}, "jobs": {"freesel-features": dict(idle), "freesel-writeout": dict(idle)},
    }
    return {**base, **changes}


def test_a_ranking_written_and_switched_with_every_job_idle_counts() -> None:
    assert ranked_since(status(), expected_tasks=10, since=0.0)


def test_a_ranking_not_yet_served_by_the_queue_does_not_count() -> None:
    assert not ranked_since(status(live=None, writeout=None), expected_tasks=10, since=0.0)
    assert not ranked_since(status(writeout={"state": "writing"}), expected_tasks=10, since=0.0)


def test_a_ranking_of_no_task_needs_no_write_out() -> None:
    assert ranked_since(status(ranked=0, live=None, writeout=None), expected_tasks=10, since=0.0)


def test_pending_patterns_a_waiting_job_or_an_older_ranking_do_not_count() -> None:
    assert not ranked_since(status(patterns_pending=1), expected_tasks=10, since=0.0)
    busy = {"freesel-writeout": {"queued": 1, "running": 0, "scheduled": 0}}
    assert not ranked_since(status(jobs=busy), expected_tasks=10, since=0.0)
    assert not ranked_since(status(), expected_tasks=10, since=2_000_000_000.0)
