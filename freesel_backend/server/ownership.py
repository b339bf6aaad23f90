"""One owner of MODEL_DIR: the lock ``serve`` holds on it while it runs an embedded Redis there,
and child processes that end when ``serve`` ends, however it ends."""

from __future__ import annotations

import ctypes
import fcntl
import functools
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from .settings import SettingsError

LOCK_FILE = "serve.lock"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class ModelDirInUse(SettingsError):
    """Another ``serve``, or processes it started, hold MODEL_DIR."""


def hold_model_dir(model_dir: Path, wait_s: float = 10.0) -> int:
    """Lock ``MODEL_DIR/serve.lock`` (and write this pid into it) for as long as this process or a
    child that inherits the returned file descriptor runs: the kernel releases the lock when the
    last of them has ended, so a killed owner never leaves a stale lock behind. When the pid in
    the file no longer runs, its children may still be ending: wait up to ``wait_s`` for them."""
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / LOCK_FILE
    lock_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + wait_s
    while not _locked(lock_fd):
        owner = _owner_pid(lock_fd)
        if owner is None or _running(owner) or time.monotonic() >= deadline:
            os.close(lock_fd)
            raise ModelDirInUse(_in_use_message(path, owner))
        time.sleep(0.1)
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
    return lock_fd


def _locked(lock_fd: int) -> bool:
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _owner_pid(lock_fd: int) -> int | None:
    text = os.pread(lock_fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def _in_use_message(path: Path, owner: int | None) -> str:
    if owner is None or _running(owner):
        return (
            f"MODEL_DIR {path.parent} is in use by another serve (pid {owner or 'unknown'}, lock {path}): "
            "stop it first, or give this one another MODEL_DIR"
        )
    return (
        f"MODEL_DIR {path.parent} is still held by processes of a serve that has ended (pid {owner}): "
        f"end them (`fuser -v {path}` lists them) and start again"
    )


def parent_death_signal(sent: signal.Signals) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child is sent ``sent`` when the calling thread's
    process ends, ``kill -9`` included (Linux's PR_SET_PDEATHSIG); None where the system has no such
    call. Popen must be called from a thread that lives as long as the process (the main thread)."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    _prctl()  # loaded here: the child runs as little as it can between fork and exec
    return lambda: _set_parent_death_signal(sent, parent)


def kill_forked_children_with_this_process() -> None:
    """Children this process forks without exec (RQ's scheduler) are killed when it ends; Linux only."""
    if not sys.platform.startswith("linux"):
        return
    forking = [os.getpid()]  # the process that forks: this one, or a forked child forking in turn
    os.register_at_fork(
        before=lambda: forking.__setitem__(0, os.getpid()),
        after_in_child=lambda: _set_parent_death_signal(signal.SIGKILL, forking[0]),
    )


@functools.cache
def _prctl() -> Callable[..., int]:
    return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]


def _set_parent_death_signal(sent: signal.Signals, parent: int) -> None:
    if _prctl()(_PR_SET_PDEATHSIG, int(sent)) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent ended before the call above
        os.kill(os.getpid(), sent)


def exit_with_parent(parent: int, interval_s: float = 1.0) -> None:
    """Where no parent-death signal exists: a thread that kills this process once ``parent`` is no
    longer its parent."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
