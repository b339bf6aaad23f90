"""The Redis store: patterns, failures, project settings/state and selection results.

Key layout (``<p>`` = prefix, ``<id>`` = project id, ``<v>`` = patterns version)::

    <p>:projects                      set of project ids seen
    <p>:<id>:settings                 JSON of ProjectSettings
    <p>:<id>:state                    hash: image field, previous sampling, current model version, ...
    <p>:<id>:tasks                    set of task ids known to the backend
    <p>:<id>:pending                  sorted set: tasks waiting for patterns, by a hash of their id
    <p>:<id>:claimed                  hash pattern job id -> JSON list of the pending tasks it drew
    <p>:<id>:patterns:<v>             hash task id -> encoded float16 patterns
    <p>:<id>:failed:<v>               hash task id -> reason
    <p>:<id>:stages:<v>               hash: tasks and seconds per stage of the pattern jobs (PATTERN_STAGES)
    <p>:<id>:copies                   hash task id -> encoded CopyRecord (file digest, copy signature or
                                      the reason it has none); whatever the patterns version
    <p>:<id>:digests                  hash file digest -> the first task with that file
    <p>:<id>:copy_pairs               hash two file digests (32 bytes each) -> the pair's copy score
                                      (float64): candidate pairs verified so far, whatever the threshold
    <p>:<id>:predictions              hash task id -> JSON prediction in Label Studio's live version
                                      (with its Label Studio id; what /predict answers)
    <p>:<id>:staged:<m>               hash task id -> JSON prediction imported under model version <m>
                                      before the project's queue is switched to it
    <p>:<id>:target                   JSON of the last ranking that the write-out brings Label Studio to
    <p>:<id>:flags                    hash task id -> flag text written into the task's data
    <p>:<id>:copy_of                  hash task id -> representative written as the task's freesel_copy_of
    <p>:<id>:selection                JSON of the last selection run (SelectionRecord)
    <p>:<id>:report                   hash: model_version, html (the report of that selection run)

Patterns live under a version derived from everything that shapes them (model, K, attention
ratio, image size, ...), so a settings change simply finds nothing and recomputes. When the
project moves to another version, the old version's patterns and failures expire after
``OLD_VERSION_TTL_S`` (a quick switch back finds them; later they are gone).
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import redis
from redis.lock import Lock

from .settings import ProjectSettings
from ..engine import DuplicateGroups, Ranking
from ..engine.ranking import ranking_from_json, ranking_to_json

PATTERN_HEADER = struct.Struct("<HH")
PAIR_SCORE = struct.Struct("<d")
PAIRS_PER_ROUND_TRIP = 10_000  # rows (patterns), columns (feature dimension)
OLD_VERSION_TTL_S = 24 * 3600
PROGRESS_FIELDS = ("progress_since", "progress_base")
DIGEST_HEX = 64  # a SHA-256 file digest in hex (engine.copies.content_digest)
# The pattern jobs' time, summed over their chunks: wall (each chunk's job, end to end), the
# model's forward, the Redis write, and the background threads' downloads and decoding.
PATTERN_STAGES = ("wall_s", "download_s", "decode_s", "forward_s", "store_s")
# A pattern job's draw from the pending tasks, atomic and repeatable: a retried job (same id)
# gets the tasks it drew before, never others. KEYS: pending, claimed; ARGV: job id, count.
CLAIM_SCRIPT = """
local drawn = redis.call('HGET', KEYS[2], ARGV[1])
if drawn then return drawn end
local popped = redis.call('ZPOPMIN', KEYS[1], tonumber(ARGV[2]))
local tasks = {}
for i = 1, #popped, 2 do tasks[#tasks + 1] = tonumber(popped[i]) end
drawn = cjson.encode(tasks)
redis.call('HSET', KEYS[2], ARGV[1], drawn)
return drawn
"""


def draw_position(task_id: int) -> int:
    """Where a task waits among the pending ones: a hash of its id (52 bits, exact as a Redis
    score), so that every prefix of the pending tasks is a uniform random sample of them."""
    return int.from_bytes(hashlib.sha1(str(int(task_id)).encode()).digest()[:7], "big") >> 4


def encode_patterns(patterns: np.ndarray) -> bytes:
    """(k, D) array -> 4-byte shape header + float16 little-endian values."""
    matrix = np.asarray(patterns)
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise ValueError(f"patterns must be a non-empty (k, D) array, got shape {matrix.shape}")
    return PATTERN_HEADER.pack(*matrix.shape) + matrix.astype("<f2").tobytes()


def decode_patterns(blob: bytes) -> np.ndarray:
    """Inverse of :func:`encode_patterns`, as float32."""
    rows, columns = PATTERN_HEADER.unpack_from(blob)
    values = np.frombuffer(blob, dtype="<f2", offset=PATTERN_HEADER.size)
    if values.size != rows * columns:
        raise ValueError(f"pattern blob holds {values.size} values, header says {rows}x{columns}")
    return values.reshape(rows, columns).astype(np.float32)


@dataclass(frozen=True)
class CopyRecord:
    """What the copy detector keeps of a task's file: its digest (equal digests: the same bytes)
    and either its copy signature (``engine.copies.CopySignature.to_bytes``, opaque here) or the
    reason it has none (too small, animated, blank)."""

    digest: str
    signature: bytes | None = None
    reason: str = ""

    def encode(self) -> bytes:
        """The digest (64 hex digits), then ``S`` and the signature or ``R`` and the reason."""
        tail = b"S" + self.signature if self.signature is not None else b"R" + self.reason.encode()
        return self.digest.encode() + tail

    @classmethod
    def decode(cls, blob: bytes) -> "CopyRecord":
        digest, kind, payload = blob[:DIGEST_HEX].decode(), blob[DIGEST_HEX : DIGEST_HEX + 1], blob[DIGEST_HEX + 1 :]
        return cls(digest, payload, "") if kind == b"S" else cls(digest, None, payload.decode())


def _pair_field(pair: tuple[str, str]) -> bytes:
    return bytes.fromhex(pair[0]) + bytes.fromhex(pair[1])


def patterns_version(model_id: str, **settings: Any) -> str:
    """A short stable name for the patterns ``model_id`` makes with these extractor settings."""
    described = json.dumps({"model": model_id, **settings}, sort_keys=True, default=str)
    return "p" + hashlib.sha1(described.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SelectionRecord:
    """What one selection run ranked, enough to rebuild its :class:`Ranking` and near-duplicate
    groups without drawing again. Indices (``order``, ``seeds``, ``duplicate_groups``) are
    positions in ``task_ids``; ``distance[j]`` is None for a first pick drawn without seeds;
    ``prior``: the draw prior per task of the ``strategy`` ranked with (empty for a strategy without one)."""

    model_version: str
    patterns_version: str
    task_ids: list[int]
    order: list[int]
    distance: list[float | None]
    n_picked: int
    seeds: list[int]
    duplicate_groups: list[list[int]]
    duplicate_threshold: float
    strategy: str = ""
    prior: list[float] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        model_version: str,
        patterns_version: str,
        task_ids: Sequence[int],
        ranking: Ranking,
        duplicates: DuplicateGroups,
        strategy: str = "",
        prior: np.ndarray | None = None,
    ) -> "SelectionRecord":
        return cls(
            model_version=model_version,
            patterns_version=patterns_version,
            task_ids=[int(t) for t in task_ids],
            **ranking_to_json(ranking),
            duplicate_groups=[[int(i) for i in group] for group in duplicates.groups],
            duplicate_threshold=float(duplicates.threshold),
            strategy=strategy,
            prior=[] if prior is None else [float(value) for value in prior],
        )

    def ranking(self) -> Ranking:
        return ranking_from_json(asdict(self))

    def duplicates(self) -> DuplicateGroups:
        group_of = np.full(len(self.task_ids), -1, dtype=np.int64)
        for position, group in enumerate(self.duplicate_groups):
            group_of[group] = position
        return DuplicateGroups([list(g) for g in self.duplicate_groups], group_of, self.duplicate_threshold)

    def draw_prior(self, strategy: str) -> np.ndarray | None:
        """The draw prior this ranking used, if it drew with ``strategy`` (the prior depends on it)."""
        return np.asarray(self.prior, dtype=np.float64) if self.prior and self.strategy == strategy else None

    def task_groups(self) -> list[list[int]]:
        """The near-duplicate groups as task ids."""
        return [[self.task_ids[i] for i in group] for group in self.duplicate_groups]


class Store:
    """Typed access to FreeSel's data in one Redis database."""

    def __init__(self, connection: redis.Redis, prefix: str = "freesel") -> None:
        self._redis = connection
        self._prefix = prefix

    def _key(self, project_id: int, *parts: str) -> str:
        return ":".join((self._prefix, str(int(project_id)), *parts))

    # ---- projects, settings, state -----------------------------------------------------------

    def project_ids(self) -> list[int]:
        return sorted(int(member) for member in self._redis.smembers(f"{self._prefix}:projects"))

    def get_settings(self, project_id: int) -> ProjectSettings:
        raw = self._redis.get(self._key(project_id, "settings"))
        return ProjectSettings.from_stored(json.loads(raw)) if raw else ProjectSettings()

    def save_settings(self, project_id: int, settings: ProjectSettings) -> None:
        with self._redis.pipeline() as pipe:
            pipe.sadd(f"{self._prefix}:projects", int(project_id))
            pipe.set(self._key(project_id, "settings"), json.dumps(settings.to_dict()))
            pipe.execute()

    def get_state(self, project_id: int) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self._redis.hgetall(self._key(project_id, "state")).items()}

    def update_state(self, project_id: int, **fields: str | int | float) -> None:
        with self._redis.pipeline() as pipe:
            pipe.sadd(f"{self._prefix}:projects", int(project_id))
            pipe.hset(self._key(project_id, "state"), mapping={k: str(v) for k, v in fields.items()})
            pipe.execute()

    def forget_state(self, project_id: int, *fields: str) -> None:
        """Remove these fields from the project's state."""
        self._redis.hdel(self._key(project_id, "state"), *fields)

    def remember_once(self, project_id: int, **fields: str) -> bool:
        """Store ``fields`` in the state only if ``fields``' first key is not there yet (atomic)."""
        key = self._key(project_id, "state")
        first, *_ = fields
        if not self._redis.hsetnx(key, first, fields[first]):
            return False
        self._redis.hset(key, mapping=fields)
        return True

    def use_patterns_version(self, project_id: int, version: str) -> bool:
        """Make ``version`` the project's patterns version. On a change, the previous version's
        patterns and failures start to expire and the progress window restarts. True if it changed."""
        state = self._key(project_id, "state")
        previous = self._redis.hget(state, "patterns_version")
        if previous is not None and previous.decode() == version:
            return False
        with self._redis.pipeline() as pipe:
            pipe.sadd(f"{self._prefix}:projects", int(project_id))
            pipe.hset(state, "patterns_version", version)
            pipe.hdel(state, *PROGRESS_FIELDS)
            for kind in ("patterns", "failed", "stages"):
                pipe.persist(self._key(project_id, kind, version))
                if previous is not None:
                    pipe.expire(self._key(project_id, kind, previous.decode()), OLD_VERSION_TTL_S)
            pipe.execute()
        return True

    def start_progress(self, project_id: int, settled: int) -> None:
        """Start the progress window (time and tasks settled then) unless one is open."""
        self.remember_once(project_id, progress_since=str(time.time()), progress_base=str(settled))

    def end_progress(self, project_id: int) -> None:
        self._redis.hdel(self._key(project_id, "state"), *PROGRESS_FIELDS)

    def forget_ranking(self, project_id: int) -> None:
        with self._redis.pipeline() as pipe:
            pipe.hdel(
                self._key(project_id, "state"),
                "ranked_version",
                "ranked_fingerprint",
                "ranked_patterns",
                "ranked_from_sample",
                "model_version",
                "target_generation",
                *PROGRESS_FIELDS,
            )
            pipe.delete(
                self._key(project_id, "selection"), self._key(project_id, "report"), self._key(project_id, "target")
            )
            pipe.execute()

    def next_run(self, project_id: int) -> int:
        return int(self._redis.hincrby(self._key(project_id, "state"), "runs", 1))

    def next_version_number(self, project_id: int) -> int:
        """1, 2, 3, ... per project: the number in FreeSel's next model version name."""
        return int(self._redis.hincrby(self._key(project_id, "state"), "versions", 1))

    def lock(self, project_id: int, name: str, **options: Any) -> Lock:
        """The project's Redis lock ``name`` ("selection", "report", "writeout"); ``options`` as redis-py's."""
        return self._redis.lock(self._key(project_id, f"{name}-lock"), **options)

    def due(self, project_id: int, name: str, interval_s: int) -> bool:
        """True at most once per ``interval_s`` for the project's ``name`` (a True starts the interval)."""
        return bool(self._redis.set(self._key(project_id, name), time.time(), nx=True, ex=interval_s))

    # ---- tasks --------------------------------------------------------------------------------

    def add_tasks(self, project_id: int, task_ids: Iterable[int]) -> None:
        ids = [int(t) for t in task_ids]
        if ids:
            self._redis.sadd(self._key(project_id, "tasks"), *ids)

    def remove_tasks(self, project_id: int, task_ids: Iterable[int]) -> None:
        ids = [int(t) for t in task_ids]
        if not ids:
            return
        with self._redis.pipeline() as pipe:
            pipe.srem(self._key(project_id, "tasks"), *ids)
            pipe.zrem(self._key(project_id, "pending"), *ids)
            pipe.hdel(self._key(project_id, "predictions"), *ids)
            pipe.execute()

    def task_ids(self, project_id: int) -> set[int]:
        return {int(t) for t in self._redis.smembers(self._key(project_id, "tasks"))}

    # ---- tasks waiting for patterns -----------------------------------------------------------

    def add_pending(self, project_id: int, task_ids: Iterable[int]) -> int:
        """Put these tasks among those waiting for patterns; returns how many were not waiting yet."""
        positions = {int(t): draw_position(t) for t in task_ids}
        return int(self._redis.zadd(self._key(project_id, "pending"), positions, nx=True)) if positions else 0

    def claim_pending(self, project_id: int, job_id: str, count: int) -> list[int]:
        """Up to ``count`` waiting tasks for the pattern job ``job_id``, in draw order (whichever
        import they came with), taken out of the waiting ones; the same tasks again when the job
        asks again (a retry) until :meth:`release_claim`."""
        script = self._redis.register_script(CLAIM_SCRIPT)
        drawn = script(keys=[self._key(project_id, "pending"), self._key(project_id, "claimed")], args=[job_id, count])
        return [int(t) for t in json.loads(drawn)]

    def pending_tasks(self, project_id: int) -> set[int]:
        return {int(t) for t in self._redis.zrange(self._key(project_id, "pending"), 0, -1)}

    def claims(self, project_id: int) -> dict[str, list[int]]:
        """Pattern job id -> the pending tasks it drew."""
        raw = self._redis.hgetall(self._key(project_id, "claimed"))
        return {job_id.decode(): [int(t) for t in json.loads(drawn)] for job_id, drawn in raw.items()}

    def release_claim(self, project_id: int, job_id: str) -> None:
        """The job ``job_id`` is done with the tasks it drew (patterns or failures saved)."""
        self._redis.hdel(self._key(project_id, "claimed"), job_id)

    def patterns_outstanding(self, project_id: int) -> bool:
        """Whether tasks still wait for a pattern job, or a pattern job still works on tasks it drew."""
        with self._redis.pipeline() as pipe:
            pipe.exists(self._key(project_id, "pending"))
            pipe.exists(self._key(project_id, "claimed"))
            return any(pipe.execute())

    # ---- patterns and failures ----------------------------------------------------------------

    def save_results(
        self, project_id: int, version: str, patterns: Mapping[int, np.ndarray], failures: Mapping[int, str]
    ) -> None:
        """One round trip: patterns and failures of a chunk (a success clears an old failure)."""
        patterns_key, failed_key = self._key(project_id, "patterns", version), self._key(project_id, "failed", version)
        with self._redis.pipeline() as pipe:
            if patterns:
                pipe.hset(patterns_key, mapping={int(t): encode_patterns(p) for t, p in patterns.items()})
                pipe.hdel(failed_key, *[int(t) for t in patterns])
            if failures:
                pipe.hset(failed_key, mapping={int(t): reason for t, reason in failures.items()})
            pipe.execute()

    def load_patterns(
        self, project_id: int, version: str, task_ids: Iterable[int] | None = None
    ) -> dict[int, np.ndarray]:
        """Stored patterns by task id (all of the version, or those of ``task_ids`` that exist)."""
        key = self._key(project_id, "patterns", version)
        if task_ids is None:
            return {int(t): decode_patterns(blob) for t, blob in self._redis.hgetall(key).items()}
        ids = [int(t) for t in task_ids]
        blobs = self._redis.hmget(key, ids) if ids else []
        return {t: decode_patterns(blob) for t, blob in zip(ids, blobs) if blob is not None}

    def tasks_with_patterns(self, project_id: int, version: str) -> set[int]:
        return {int(t) for t in self._redis.hkeys(self._key(project_id, "patterns", version))}

    # ---- copies -------------------------------------------------------------------------------

    def save_copy_records(self, project_id: int, records: Mapping[int, CopyRecord]) -> None:
        """The tasks' copy records; each digest not seen before points to its task from now on."""
        if not records:
            return
        with self._redis.pipeline() as pipe:
            pipe.hset(self._key(project_id, "copies"), mapping={int(t): r.encode() for t, r in records.items()})
            for task_id, record in sorted(records.items()):
                pipe.hsetnx(self._key(project_id, "digests"), record.digest, int(task_id))
            pipe.execute()

    def copy_records(self, project_id: int, task_ids: Iterable[int]) -> dict[int, CopyRecord]:
        """The copy records of those of ``task_ids`` that have one."""
        ids = [int(t) for t in task_ids]
        blobs = self._redis.hmget(self._key(project_id, "copies"), ids) if ids else []
        return {t: CopyRecord.decode(blob) for t, blob in zip(ids, blobs) if blob is not None}

    def tasks_with_copy_records(self, project_id: int) -> set[int]:
        return {int(t) for t in self._redis.hkeys(self._key(project_id, "copies"))}

    def copy_pair_scores(self, project_id: int, pairs: Sequence[tuple[str, str]]) -> list[float | None]:
        """The stored copy score of each pair of file digests, None for a pair never scored."""
        key = self._key(project_id, "copy_pairs")
        found: list[float | None] = []
        for start in range(0, len(pairs), PAIRS_PER_ROUND_TRIP):
            fields = [_pair_field(pair) for pair in pairs[start : start + PAIRS_PER_ROUND_TRIP]]
            found += [None if raw is None else PAIR_SCORE.unpack(raw)[0] for raw in self._redis.hmget(key, fields)]
        return found

    def add_copy_pair_scores(self, project_id: int, scores: Mapping[tuple[str, str], float]) -> None:
        key = self._key(project_id, "copy_pairs")
        items = list(scores.items())
        with self._redis.pipeline() as pipe:
            for start in range(0, len(items), PAIRS_PER_ROUND_TRIP):
                chunk = items[start : start + PAIRS_PER_ROUND_TRIP]
                pipe.hset(key, mapping={_pair_field(pair): PAIR_SCORE.pack(score) for pair, score in chunk})
            pipe.execute()

    def task_of_digest(self, project_id: int, digest: str) -> int | None:
        """The first task seen with the file of this digest (deleted since, perhaps), if any."""
        raw = self._redis.hget(self._key(project_id, "digests"), digest)
        return int(raw) if raw is not None else None

    def failures(self, project_id: int, version: str) -> dict[int, str]:
        raw = self._redis.hgetall(self._key(project_id, "failed", version))
        return {int(t): reason.decode() for t, reason in raw.items()}

    def count_done(self, project_id: int, version: str) -> tuple[int, int]:
        """(tasks with patterns, failed tasks) for this version."""
        with self._redis.pipeline() as pipe:
            pipe.hlen(self._key(project_id, "patterns", version))
            pipe.hlen(self._key(project_id, "failed", version))
            done, failed = pipe.execute()
        return int(done), int(failed)

    def add_pattern_stages(self, project_id: int, version: str, tasks: int, seconds: Mapping[str, float]) -> None:
        """Add one pattern job's ``tasks`` and ``seconds`` per stage (PATTERN_STAGES) to the version's sums."""
        key = self._key(project_id, "stages", version)
        with self._redis.pipeline() as pipe:
            pipe.hincrby(key, "tasks", int(tasks))
            for stage in PATTERN_STAGES:
                pipe.hincrbyfloat(key, stage, float(seconds.get(stage, 0.0)))
            pipe.execute()

    def pattern_stages(self, project_id: int, version: str) -> dict[str, float]:
        """The sums of :meth:`add_pattern_stages` for the version: ``tasks`` and PATTERN_STAGES (empty if none)."""
        raw = self._redis.hgetall(self._key(project_id, "stages", version))
        return {field.decode(): float(value) for field, value in raw.items()}

    # ---- selection results --------------------------------------------------------------------

    def replace_predictions(self, project_id: int, predictions: Mapping[int, Mapping[str, Any]]) -> None:
        """Atomically swap the stored predictions for these (write aside, then rename)."""
        key = self._key(project_id, "predictions")
        staging = key + ":next"
        with self._redis.pipeline() as pipe:
            pipe.delete(staging)
            if predictions:
                pipe.hset(staging, mapping={int(t): json.dumps(p) for t, p in predictions.items()})
                pipe.rename(staging, key)
            else:
                pipe.delete(key)
            pipe.execute()

    def update_predictions(
        self, project_id: int, predictions: Mapping[int, Mapping[str, Any]], staged: str | None = None
    ) -> None:
        """Record these predictions as written (to the live version, or to the ``staged`` one)."""
        if predictions:
            self._redis.hset(
                self._predictions_key(project_id, staged),
                mapping={int(t): json.dumps(p) for t, p in predictions.items()},
            )

    def all_predictions(self, project_id: int, staged: str | None = None) -> dict[int, dict[str, Any]]:
        return {
            int(t): json.loads(value)
            for t, value in self._redis.hgetall(self._predictions_key(project_id, staged)).items()
        }

    def forget_predictions(self, project_id: int, task_ids: Iterable[int], staged: str | None = None) -> None:
        """Forget what was recorded of these tasks' predictions in the live version (or the ``staged``
        one): Label Studio no longer holds them."""
        ids = [int(t) for t in task_ids]
        if ids:
            self._redis.hdel(self._predictions_key(project_id, staged), *ids)

    def _predictions_key(self, project_id: int, staged: str | None = None) -> str:
        """The hash of the predictions written to the live version, or to the ``staged`` one."""
        return self._key(project_id, "staged", staged) if staged else self._key(project_id, "predictions")

    def promote_staged(self, project_id: int, model_version: str) -> None:
        """The staged version became the live one: its predictions replace the live ones."""
        key, staged = self._key(project_id, "predictions"), self._key(project_id, "staged", model_version)
        with self._redis.pipeline() as pipe:
            pipe.delete(key)
            if self._redis.exists(staged):  # nothing is staged when nothing was ranked
                pipe.rename(staged, key)
            pipe.hset(
                self._key(project_id, "state"),
                mapping={"model_version": model_version, "switched_at": str(time.time())},
            )
            pipe.execute()

    def save_imported(
        self, project_id: int, predictions: Mapping[int, Mapping[str, Any]], staged: str | None = None
    ) -> None:
        """An import answered (or what Label Studio shows of one that was not): its predictions are
        recorded and no import is in flight any more, in one transaction."""
        with self._redis.pipeline() as pipe:
            if predictions:
                pipe.hset(
                    self._predictions_key(project_id, staged),
                    mapping={int(t): json.dumps(p) for t, p in predictions.items()},
                )
            pipe.hdel(self._key(project_id, "state"), "import_in_flight")
            pipe.execute()

    def record_writeout_step(
        self, project_id: int, generation: str, requests: int, writes: int, seconds: float, finished: bool
    ) -> None:
        """Add a write-out step's requests, writes and seconds to its ranking's record (a ranking's
        write-out may take several steps); the step that finishes makes the ranking live."""
        key = self._key(project_id, "writeout")
        if self._redis.hget(key, "generation") != generation.encode():
            self._redis.delete(key)
            self._redis.hset(key, mapping={"generation": generation, "started_at": time.time() - seconds})
        with self._redis.pipeline() as pipe:
            pipe.hincrby(key, "requests", requests)
            pipe.hincrby(key, "writes", writes)
            pipe.hincrbyfloat(key, "seconds", seconds)
            pipe.hset(key, "finished_at" if finished else "updated_at", time.time())
            if finished:
                pipe.hset(
                    self._key(project_id, "state"), mapping={"live_generation": generation, "live_at": str(time.time())}
                )
            pipe.execute()

    def writeout_record(self, project_id: int) -> dict[str, str]:
        """The last ranking's write-out record (see :meth:`record_writeout_step`)."""
        return {k.decode(): v.decode() for k, v in self._redis.hgetall(self._key(project_id, "writeout")).items()}

    def drop_staged(self, project_id: int, model_version: str) -> None:
        self._redis.delete(self._key(project_id, "staged", model_version))

    def save_target(self, project_id: int, target: Mapping[str, Any]) -> None:
        with self._redis.pipeline() as pipe:
            pipe.set(self._key(project_id, "target"), json.dumps(target))
            pipe.hset(self._key(project_id, "state"), "target_generation", str(target["generation"]))
            pipe.execute()

    def target_generation(self, project_id: int) -> str | None:
        """The generation of the project's target, read without the target itself (which holds every task)."""
        raw = self._redis.hget(self._key(project_id, "state"), "target_generation")
        return raw.decode() if raw is not None else None

    def get_target(self, project_id: int) -> dict[str, Any] | None:
        raw = self._redis.get(self._key(project_id, "target"))
        return json.loads(raw) if raw else None

    def get_predictions(self, project_id: int, task_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        ids = [int(t) for t in task_ids]
        raw = self._redis.hmget(self._key(project_id, "predictions"), ids) if ids else []
        return {t: json.loads(value) for t, value in zip(ids, raw) if value is not None}

    def count_predictions(self, project_id: int) -> int:
        return int(self._redis.hlen(self._key(project_id, "predictions")))

    def get_flags(self, project_id: int) -> dict[int, str]:
        return {int(t): v.decode() for t, v in self._redis.hgetall(self._key(project_id, "flags")).items()}

    def set_flag(self, project_id: int, task_id: int, text: str | None) -> None:
        """Record the flag now in the task's data (None: none)."""
        key = self._key(project_id, "flags")
        if text is None:
            self._redis.hdel(key, int(task_id))
        else:
            self._redis.hset(key, int(task_id), text)

    def replace_flags(self, project_id: int, flags: Mapping[int, str]) -> None:
        key = self._key(project_id, "flags")
        with self._redis.pipeline() as pipe:
            pipe.delete(key)
            if flags:
                pipe.hset(key, mapping={int(t): text for t, text in flags.items()})
            pipe.execute()

    def copy_fields(self, project_id: int) -> dict[int, int]:
        """Task id -> the representative written as its ``freesel_copy_of`` in Label Studio."""
        raw = self._redis.hgetall(self._key(project_id, "copy_of"))
        return {int(t): int(representative) for t, representative in raw.items()}

    def set_copy_field(self, project_id: int, task_id: int, representative: int | None) -> None:
        """Record the task's ``freesel_copy_of`` as written (None: none)."""
        key = self._key(project_id, "copy_of")
        if representative is None:
            self._redis.hdel(key, int(task_id))
        else:
            self._redis.hset(key, int(task_id), int(representative))

    # ---- the last selection run and its report ------------------------------------------------

    def save_selection(self, project_id: int, record: SelectionRecord) -> None:
        self._redis.set(self._key(project_id, "selection"), json.dumps(asdict(record)))

    def get_selection(self, project_id: int) -> SelectionRecord | None:
        raw = self._redis.get(self._key(project_id, "selection"))
        return SelectionRecord(**json.loads(raw)) if raw else None

    def save_report(self, project_id: int, model_version: str, html: str) -> None:
        self._redis.hset(self._key(project_id, "report"), mapping={"model_version": model_version, "html": html})

    def get_report(self, project_id: int, model_version: str) -> str | None:
        """The stored report HTML if it describes the selection run ``model_version``."""
        stored_version, html = self._redis.hmget(self._key(project_id, "report"), ["model_version", "html"])
        if stored_version is None or html is None or stored_version.decode() != model_version:
            return None
        return html.decode()
