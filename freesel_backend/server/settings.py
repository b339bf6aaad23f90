"""Configuration: process settings from the environment, per-project FreeSel settings.

:class:`Settings` is read once per process (web service or worker) from environment variables;
:class:`ProjectSettings` is what a project admin tunes (connect form extra params, admin
endpoints, CLI) and lives in Redis (see ``store.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..engine import (
    DEFAULT_ATTENTION_RATIO,
    DEFAULT_MODEL,
    DEFAULT_PATTERNS_PER_IMAGE,
    PRECISIONS,
    PRESET_FIELDS,
    STRATEGIES,
    TASKS,
    preset,
)
from ..engine.copies import DEFAULT_COPY_THRESHOLD
from ..engine.selection import DEFAULT_STRATEGY, DrawSettings, resolve_budget

FEATURES_QUEUE = "freesel-features"
SELECTION_QUEUE = "freesel-selection"  # rankings and project syncs
WRITEOUT_QUEUE = "freesel-writeout"  # predictions and flags written to Label Studio, in bounded steps
CLEANUP_QUEUE = "freesel-cleanup"  # old prediction versions deleted, flags removed after disable
# A worker on several queues takes a ranking or a write-out step before the next pattern chunk: the
# picks of a first sample reach the queue while the rest of an import's patterns are computed.
QUEUES = (SELECTION_QUEUE, WRITEOUT_QUEUE, FEATURES_QUEUE, CLEANUP_QUEUE)
# What ``serve`` without REDIS_URL starts: one worker process per queue, so that a long write-out
# or pattern extraction never holds up another project's ranking, and old versions are deleted
# beside the write-outs (taking turns on the project's write lock), not after all of them.
EMBEDDED_WORKER_QUEUES = ((FEATURES_QUEUE,), (SELECTION_QUEUE,), (WRITEOUT_QUEUE,), (CLEANUP_QUEUE,))
DEFAULT_PORT = 9090


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the setting and the fix."""


Parse = Callable[[str, str], Any]  # (variable name, its value) -> the setting


def _text(name: str, raw: str) -> str:
    return raw.strip()


def _url(name: str, raw: str) -> str:
    return raw.strip().rstrip("/")


def _kept_as_typed(name: str, raw: str) -> str:
    return raw


def _path(name: str, raw: str) -> Path:
    return Path(raw).expanduser()


def _whole_number(minimum: int) -> Parse:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
        if value < minimum:
            raise SettingsError(f"{name} must be >= {minimum}, got {value}")
        return value

    return parse


def _size_or_none(name: str, raw: str) -> int | None:
    return _whole_number(0)(name, raw) or None


def _seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise SettingsError(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


def _true_or_false(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _intervals(name: str, raw: str) -> tuple[int, ...]:
    try:
        intervals = tuple(int(part) for part in raw.split(","))
    except ValueError:
        raise SettingsError(f"{name} must be comma-separated whole seconds, e.g. 10,30,120; got {raw!r}") from None
    if any(value < 0 for value in intervals):
        raise SettingsError(f"{name} must not hold negative seconds, got {raw!r}")
    return intervals


def _precision(name: str, raw: str) -> str:
    precision = raw.strip()
    if precision not in PRECISIONS:
        raise SettingsError(f"{name} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def setting(
    default: Any, variable: str, parse: Parse = _text, *, aliases: tuple[str, ...] = (), secret: bool = False
) -> Any:
    """A :class:`Settings` field: its one default, the environment variable (then ``aliases``) it
    is read from and how; an unset or blank variable leaves the default."""
    return dataclasses.field(default=default, repr=not secret, metadata={"env": (variable, *aliases), "parse": parse})


# The semantic near-duplicate threshold that copy_threshold replaced (read from stored settings).
RETIRED_DUPLICATE_THRESHOLD = "duplicate_threshold"
WEBHOOK_SECRET_HEADER = "X-FreeSel-Webhook-Secret"


@dataclass(frozen=True)
class Settings:
    """Process settings, from environment variables (see README, "Settings")."""

    label_studio_url: str = setting("", "LABEL_STUDIO_URL", _url, aliases=("LABEL_STUDIO_HOST",))
    label_studio_api_key: str = setting("", "LABEL_STUDIO_API_KEY", secret=True)
    redis_url: str | None = setting(None, "REDIS_URL")
    model_dir: Path = setting(Path("model_dir"), "MODEL_DIR", _path)
    public_url: str = setting(f"http://localhost:{DEFAULT_PORT}", "FREESEL_PUBLIC_URL", _url)
    model: str = setting(DEFAULT_MODEL, "FREESEL_MODEL")
    basic_auth_user: str = setting("", "BASIC_AUTH_USER", _kept_as_typed)
    basic_auth_pass: str = setting("", "BASIC_AUTH_PASS", _kept_as_typed, secret=True)
    device: str | None = setting(None, "FREESEL_DEVICE")
    precision: str = setting("fp32", "FREESEL_PRECISION", _precision)
    batch_size: int = setting(32, "FREESEL_BATCH_SIZE", _whole_number(1))
    chunk_size: int = setting(64, "FREESEL_CHUNK_SIZE", _whole_number(1))
    job_timeout_s: int = setting(3600, "FREESEL_JOB_TIMEOUT", _whole_number(1))
    job_retries: int = setting(3, "FREESEL_JOB_RETRIES", _whole_number(0))
    retry_intervals: tuple[int, ...] = setting((10, 30, 120), "FREESEL_RETRY_INTERVALS", _intervals)
    # A worker refreshes its running job's lease this often; a job whose lease ran out for
    # 3 heartbeats (worker killed) is retried by the next worker maintenance (every maintenance_s,
    # idle workers included), through RQ's scheduler when the first retry interval is not 0.
    worker_heartbeat_s: int = setting(30, "FREESEL_WORKER_HEARTBEAT", _whole_number(1))
    worker_maintenance_s: int = setting(60, "FREESEL_WORKER_MAINTENANCE", _whole_number(1))
    download_max_bytes: int = setting(64 * 1024 * 1024, "FREESEL_DOWNLOAD_MAX_BYTES", _whole_number(1))
    download_timeout_s: int = setting(30, "FREESEL_DOWNLOAD_TIMEOUT", _whole_number(1))
    # Images downloaded (and decoded) at once per worker while the model runs: enough to keep it
    # busy at 150-300 ms per download (benchmarks/extraction.py), few enough to spare the image host.
    download_workers: int = setting(8, "FREESEL_DOWNLOAD_WORKERS", _whole_number(1))
    # Image URLs (and redirects) to loopback/private/link-local addresses are refused unless set;
    # the configured Label Studio host is always allowed.
    allow_private_downloads: bool = setting(False, "FREESEL_ALLOW_PRIVATE_DOWNLOADS", _true_or_false)
    max_request_bytes: int = setting(64 * 1024 * 1024, "FREESEL_MAX_REQUEST_BYTES", _whole_number(1))
    # The write-out: the first head_size tasks of the queue are kept in exact order and flagged,
    # the first top_before_imports of them before predictions are imported for tasks without one
    # (tens of seconds for thousands: annotators keep taking flagged tasks from the top meanwhile);
    # a re-ranking starts at most once per rerank_interval_s per project; a write-out job makes at
    # most writeout_step_requests requests, then yields its worker; bulk imports and version
    # deletes may take label_studio_write_timeout_s before Label Studio is asked what it did.
    head_size: int = setting(300, "FREESEL_HEAD_SIZE", _whole_number(1))
    # While an import's patterns come in (in random order), the first ranking runs once
    # first_ranking_tasks have patterns or after first_ranking_s of pattern work, whichever comes
    # first; the next ones each time the patterns double, and once all are in.
    first_ranking_tasks: int = setting(300, "FREESEL_FIRST_RANKING_TASKS", _whole_number(1))
    first_ranking_s: float = setting(60.0, "FREESEL_FIRST_RANKING_AFTER", _seconds)
    top_before_imports: int = setting(100, "FREESEL_TOP_BEFORE_IMPORTS", _whole_number(1))
    rerank_interval_s: int = setting(10, "FREESEL_RERANK_INTERVAL", _whole_number(0))
    writeout_step_requests: int = setting(200, "FREESEL_WRITEOUT_STEP", _whole_number(1))
    label_studio_write_timeout_s: float = setting(120.0, "FREESEL_LABEL_STUDIO_WRITE_TIMEOUT", _seconds)
    webhook_secret_override: str = setting("", "FREESEL_WEBHOOK_SECRET", secret=True)
    # How long Label Studio's answer to "may this token's user see project N" is trusted.
    auth_cache_s: float = setting(30.0, "FREESEL_AUTH_CACHE_S", _seconds)
    # Tests only: random weights and a small input size, so a tiny ViT runs in a test worker.
    test_random_init: bool = setting(False, "FREESEL_TEST_RANDOM_INIT", _true_or_false)
    test_image_size: int | None = setting(None, "FREESEL_TEST_IMAGE_SIZE", _size_or_none)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Every field from its environment variable (see ``environment_variables``); a variable
        that is unset or blank leaves the field's default."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = next((env[name] for name in field.metadata["env"] if (env.get(name) or "").strip()), None)
            if raw is not None:
                values[field.name] = field.metadata["parse"](field.metadata["env"][0], raw)
        return cls(**values)

    @classmethod
    def environment_variables(cls) -> dict[str, Any]:
        """Variable name -> the default of the setting it sets (aliases left out)."""
        return {field.metadata["env"][0]: field.default for field in dataclasses.fields(cls)}

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        return (self.basic_auth_user, self.basic_auth_pass) if self.basic_auth_user else None

    @property
    def webhook_secret(self) -> str:
        """The value Label Studio sends in the ``X-FreeSel-Webhook-Secret`` header of our webhooks:
        ``FREESEL_WEBHOOK_SECRET``, else derived from the API key (one-way, so the key itself is
        never stored in Label Studio's webhook settings) so every process agrees without setup."""
        if self.webhook_secret_override:
            return self.webhook_secret_override
        return self._derived_secret(b"freesel-webhook")

    @property
    def report_link_secret(self) -> str:
        """Signs report links (``POST /freesel/projects/<id>/report-link``); derived from the API key,
        so every process of one backend agrees and a new key ends every link."""
        return self._derived_secret(b"freesel-report-link")

    def _derived_secret(self, purpose: bytes) -> str:
        return hmac.new(self.label_studio_api_key.encode(), purpose, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ProjectSettings:
    """What a project admin tunes. ``budget``: picks per run as a count (>= 1) or a fraction of
    the unlabelled pool (0 < b < 1); ``None`` = the whole pool. Every run is capped at
    ``max_picks``; the tasks after the picks are ordered by distance. ``model=None`` uses the
    process default (``FREESEL_MODEL``). Tasks whose images are copies of each other (the same
    file, or a copy score of at least ``copy_threshold``: ``engine.copies``) are grouped, and once
    one of a group is picked or labelled the others carry no weight in the selection.

    ``patterns_per_image``, ``attention_ratio`` and ``strategy`` come from the preset of the
    project's kind of task (``task``, or else the one read from its label config) unless a project
    admin set them: those are listed in ``explicit`` and kept whatever the preset."""

    enabled: bool = True
    budget: float | None = None
    patterns_per_image: int = DEFAULT_PATTERNS_PER_IMAGE
    attention_ratio: float = DEFAULT_ATTENTION_RATIO
    strategy: str = DEFAULT_STRATEGY
    model: str | None = None
    max_picks: int = 2000
    seed: int = 0
    copy_threshold: float = DEFAULT_COPY_THRESHOLD
    task: str | None = None
    explicit: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise SettingsError(f"enabled must be true or false, got {self.enabled!r}")
        if self.budget is not None:
            if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)):
                raise SettingsError(f"budget must be a number or null, got {self.budget!r}")
            if (
                not math.isfinite(self.budget)
                or self.budget <= 0
                or (self.budget > 1 and self.budget != int(self.budget))
            ):
                raise SettingsError(
                    f"budget must be a whole number of picks (>= 1), a fraction in (0, 1) or null, got {self.budget!r}"
                )
        _check_int("patterns_per_image", self.patterns_per_image, 1)
        _check_int("max_picks", self.max_picks, 1)
        _check_int("seed", self.seed, 0)
        if isinstance(self.attention_ratio, bool) or not isinstance(self.attention_ratio, (int, float)) or not (
            0 < self.attention_ratio <= 1
        ):
            raise SettingsError(f"attention_ratio must be a number in (0, 1], got {self.attention_ratio!r}")
        if self.strategy not in STRATEGIES:
            raise SettingsError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if isinstance(self.copy_threshold, bool) or not isinstance(self.copy_threshold, (int, float)) or not (
            0 < self.copy_threshold <= 1
        ):
            raise SettingsError(
                "copy_threshold must be a copy score in (0, 1] (1: byte-identical files only; default "
                f"{DEFAULT_COPY_THRESHOLD}), got {self.copy_threshold!r}"
            )
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            raise SettingsError(f"model must be a model name or null, got {self.model!r}")
        if self.task is not None and self.task not in TASKS:
            raise SettingsError(
                f"task must be one of {', '.join(TASKS)} or null (from the label config), got {self.task!r}"
            )
        if (
            isinstance(self.explicit, str)
            or not isinstance(self.explicit, (list, tuple))
            or not set(self.explicit) <= set(PRESET_FIELDS)
        ):
            raise SettingsError(
                f"explicit must be a list of settings among {', '.join(PRESET_FIELDS)}, got {self.explicit!r}"
            )
        object.__setattr__(self, "explicit", tuple(sorted(set(self.explicit))))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))

    def updated(self, changes: Mapping[str, Any]) -> "ProjectSettings":
        """A copy with ``changes`` applied; unknown names are an error listing the known ones."""
        if not isinstance(changes, Mapping):
            raise SettingsError(f"settings must be a JSON object, got {type(changes).__name__}")
        if RETIRED_DUPLICATE_THRESHOLD in changes:
            raise SettingsError(
                f"{RETIRED_DUPLICATE_THRESHOLD} (a cosine distance between patterns) is retired: copies are found "
                "by copy_threshold, a copy score in (0, 1] (docs/near-duplicates.md)"
            )
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            raise SettingsError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(self.field_names())}")
        changes = dict(changes)
        if "explicit" not in changes:  # a value set now is the admin's: no preset changes it
            changes["explicit"] = (*self.explicit, *(name for name in PRESET_FIELDS if name in changes))
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> "ProjectSettings":
        """Settings as saved by :meth:`to_dict`. Saved before presets existed (no ``explicit``), a
        preset setting counts as the admin's where it differs from the default of that time. A
        stored ``duplicate_threshold`` (retired) becomes the copy threshold: 0 (near-duplicates
        turned off) the strictest, 1.0 (byte-identical files only); any other value the default."""
        stored = dict(stored)
        if RETIRED_DUPLICATE_THRESHOLD in stored:
            retired = stored.pop(RETIRED_DUPLICATE_THRESHOLD)
            stored.setdefault("copy_threshold", 1.0 if retired == 0 else DEFAULT_COPY_THRESHOLD)
        if "explicit" not in stored:
            stored["explicit"] = [
                name for name in PRESET_FIELDS if name in stored and stored[name] != getattr(cls, name)
            ]
        return cls().updated(stored)

    def with_preset(self, kind: str) -> "ProjectSettings":
        """These settings with ``kind``'s preset values wherever they are not explicit."""
        values = preset(kind)
        return dataclasses.replace(self, **{name: values[name] for name in PRESET_FIELDS if name not in self.explicit})

    def preset_in_use(self, project_state: Mapping[str, str]) -> tuple[str, str]:
        """The kind of task whose preset applies, and why: ``task`` if set, else the kind
        read from the label config (``labelstudio.label_config.task_of_label_config``, kept in the project state)."""
        if self.task is not None:
            return self.task, "set per project"
        if "label_config_task" in project_state:
            return project_state["label_config_task"], project_state.get(
                "label_config_task_reason", "from the label config"
            )
        return "classification", "the default: the label config has not been read yet"

    def describe_preset(self, project_state: Mapping[str, str]) -> str:
        """E.g. "detection, from the label config's RectangleLabels (strategy set per project)"."""
        kind, reason = self.preset_in_use(project_state)
        explicit = f" ({', '.join(self.explicit)} set per project)" if self.explicit else ""
        return f"{kind}, {reason}{explicit}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def picks_for(self, pool_size: int) -> int:
        """Number of picks for an unlabelled pool of ``pool_size``: the budget, capped at ``max_picks``."""
        wanted = pool_size if self.budget is None else resolve_budget(self.budget, pool_size)
        return min(wanted, self.max_picks, pool_size)

    def draw_settings(self) -> DrawSettings:
        """How this project's rankings draw their picks (the prior: computed from the patterns)."""
        return DrawSettings(self.strategy, self.seed)  # type: ignore[arg-type]

    def model_name(self, default: str) -> str:
        return self.model or default


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SettingsError(f"{name} must be a whole number >= {minimum}, got {value!r}")
