"""One owner of MODEL_DIR: `python -m freesel_backend serve` with its embedded Redis, killed with
SIGKILL (as the OOM killer would), takes its Redis, workers and web workers along; a second
`serve` on the same MODEL_DIR refuses to start while the first runs, and starts right after the
first was killed, running the jobs that were queued exactly once. Real processes throughout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from rq import Queue, Retry

from freesel_backend.server.ownership import ModelDirInUse, hold_model_dir
from freesel_backend.server.process import FreeSelJob
from freesel_backend.server.redis_server import free_port
from harness.backend import REPO_ROOT, backend_env, wait_for
from tests.test_main_command import MainCommand, alive, command_of, descendants, stop_group

pytestmark = pytest.mark.slow

QUEUES = ("freesel-features", "freesel-selection", "freesel-writeout", "freesel-cleanup")
JOBS = 4


def serve_env(model_dir: Path) -> dict[str, str]:
    env = backend_env("", "", "", model_dir)
    del env["REDIS_URL"]
    # a killed worker's job is found abandoned 3 s after its last lease renewal
    env.update(FREESEL_WORKER_HEARTBEAT="1", FREESEL_WORKER_MAINTENANCE="1")
    return env


def serve_command(port: int) -> list[str]:
    return [sys.executable, "-m", "freesel_backend", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--web-workers", "1"]


def start_serve(model_dir: Path, log_path: Path) -> MainCommand:
    """``serve`` with its embedded Redis and four workers, in its own session."""
    port, env = free_port(), serve_env(model_dir)
    process = subprocess.Popen(
        serve_command(port), cwd=REPO_ROOT, env=env, stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    serve = MainCommand(process, f"http://127.0.0.1:{port}", env, model_dir, log_path)

    def workers_listening() -> bool:
        assert process.poll() is None, serve.log()[-3000:]
        return all(f"*** Listening on {queue}..." in serve.log() for queue in QUEUES)

    try:
        wait_for(workers_listening, 180, "serve's four workers")
    except BaseException:
        stop_group(process)
        raise
    return serve


def redis_servers_on(data_dir: Path) -> list[int]:
    """Living redis-server processes working in ``data_dir`` (redis-server changes into its --dir)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "comm").read_text().strip() == "redis-server" and (proc / "cwd").resolve() == data_dir:
                found.append(int(proc.name))
        except OSError:
            continue
    return sorted(alive(set(found)))


def record_run(log: str, name: str, first_try_s: float) -> None:
    """A job that notes its start and its end in ``log``, and takes ``first_try_s`` on its first try."""
    path = Path(log)
    first_try = not path.exists() or f"start {name}\n" not in path.read_text()
    with path.open("a") as lines:
        lines.write(f"start {name}\n")
    if first_try:
        time.sleep(first_try_s)
    with path.open("a") as lines:
        lines.write(f"end {name}\n")


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> Iterator[MainCommand]:
    folder = tmp_path_factory.mktemp("owner")
    serve = start_serve(folder / "model_dir", folder / "first.log")
    yield serve
    stop_group(serve.process)


def test_a_second_serve_on_the_same_model_dir_says_who_holds_it_and_starts_no_redis(first):
    model_dir = first.model_dir
    second = subprocess.run(serve_command(free_port()), cwd=REPO_ROOT, env=serve_env(model_dir), capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 2
    assert f"error: MODEL_DIR {model_dir} is in use by another serve (pid {first.process.pid}," in second.stderr
    assert "Traceback" not in second.stderr
    assert len(redis_servers_on((model_dir / "redis").resolve())) == 1


def test_a_killed_serve_leaves_no_process_and_a_restart_runs_its_queued_jobs_once(first, tmp_path):
    model_dir = first.model_dir
    runs = tmp_path / "runs.log"
    queue = Queue("freesel-features", connection=first.redis(), job_class=FreeSelJob)
    for number in range(JOBS):  # the first one runs when serve is killed, the others wait behind it
        queue.enqueue(record_run, str(runs), f"job{number}", 600 if number == 0 else 0, retry=Retry(max=1),
                      job_timeout=900)
    wait_for(lambda: runs.exists() and "start job0" in runs.read_text(), 60, "the first job to start")
    tree = alive(descendants(first.process.pid))
    commands = [command_of(pid) for pid in tree]  # workers come with their scheduler processes
    assert [c for c in commands if "redis-server" in c] and [c for c in commands if "freesel_backend serve" in c]
    assert len({c for c in commands if "freesel_backend worker" in c}) == len(QUEUES)

    first.process.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    first.process.wait()
    wait_for(lambda: not alive(tree), 10, "every process of the killed serve to end", interval_s=0.05)
    print(f"SIGKILL to no process left: {time.monotonic() - killed:.2f} s")

    restarted = start_serve(model_dir, tmp_path / "restarted.log")
    try:
        print(f"SIGKILL to a restarted serve's workers listening: {time.monotonic() - killed:.1f} s")
        wait_for(lambda: runs.read_text().count("end ") == JOBS, 60, "every queued job to end")
        time.sleep(3)  # would a job run again?
        lines = runs.read_text().splitlines()
        assert sorted(line for line in lines if line.startswith("end ")) == [f"end job{n}" for n in range(JOBS)]
        # the job killed in its first try ran again; the others ran once
        assert sorted(line for line in lines if line.startswith("start ")) == ["start job0"] * 2 + [
            f"start job{n}" for n in range(1, JOBS)
        ]
        assert len(redis_servers_on((model_dir / "redis").resolve())) == 1
    finally:
        restarted.process.send_signal(signal.SIGTERM)
        restarted.process.wait(timeout=90)
        stop_group(restarted.process)


def test_the_lock_is_held_until_the_last_process_holding_it_ends(tmp_path):
    """The lock's file descriptor passes to serve's children: MODEL_DIR stays taken while any of
    them runs, and is free once they have all ended, with no stale lock left behind."""
    holder = subprocess.Popen(  # locks, starts a child that lives until the test closes its stdin, ends
        [sys.executable, "-c", "import subprocess, sys\n"
         "from pathlib import Path\n"
         "from freesel_backend.server.ownership import ModelDirInUse, hold_model_dir\n"
         "lock_fd = hold_model_dir(Path(sys.argv[1]))\n"
         "subprocess.Popen(['cat'], stdout=subprocess.DEVNULL, pass_fds=(lock_fd,))\n", str(tmp_path)],
        cwd=REPO_ROOT, stdin=subprocess.PIPE,
    )
    assert holder.wait(timeout=120) == 0
    with pytest.raises(ModelDirInUse, match=rf"held by processes of a serve that has ended \(pid {holder.pid}\)"):
        hold_model_dir(tmp_path, wait_s=0.5)
    holder.stdin.close()  # the child ends
    lock_fd = hold_model_dir(tmp_path, wait_s=10)
    assert (tmp_path / "serve.lock").read_text() == f"{os.getpid()}\n"
    os.close(lock_fd)


def test_where_no_parent_death_signal_exists_a_worker_ends_once_its_parent_has():
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys\n"
         "child = subprocess.Popen([sys.executable, '-c', 'import os, time\\n"
         "from freesel_backend.server.ownership import exit_with_parent\\n"
         "exit_with_parent(os.getppid(), interval_s=0.1)\\n"
         "print(os.getpid(), flush=True)\\n"
         "time.sleep(60)'])\n"
         "child.wait()\n"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE,
    )
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    wait_for(lambda: not alive({child}), 5, "the child to end", interval_s=0.05)
