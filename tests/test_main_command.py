"""The README's main command (`scripts/run.sh` -> `python -m freesel_backend serve` without
REDIS_URL: embedded redis-server + worker + gunicorn) against a real Label Studio 1.23.2, with
basic auth. The tests of this module share one running backend and one connected project and
run in file order: connect, status/CLI, retrieve predictions, settings change, disable."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests

from freesel_backend.server.redis_server import free_port
from harness.backend import REPO_ROOT, backend_env, credentials, wait_for
from harness.label_studio import LABEL_CONFIG
from tests.test_end_to_end import current_ranking, write_group

AUTH = ("freesel-admin", "s3cret-pass")


@dataclass
class MainCommand:
    process: subprocess.Popen[bytes]
    url: str
    env: dict[str, str]
    model_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(re.search(r"embedded Redis at (\S+)", self.log()).group(1))

    def get(self, path: str) -> dict:
        response = requests.get(f"{self.url}{path}", auth=AUTH, timeout=30)
        response.raise_for_status()
        return response.json()

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "freesel_backend", "project", *args, "--url", self.url],
            cwd=REPO_ROOT, env=self.env, capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout


def start_main_command(model_dir: Path, log_path: Path, env: dict[str, str]) -> MainCommand:
    """`scripts/run.sh` on a free port, in its own session (so a test can send Ctrl-C to all of it)."""
    port = free_port()
    env = {key: value for key, value in env.items() if key != "REDIS_URL"}
    env.update(MODEL_DIR=str(model_dir), FREESEL_PUBLIC_URL=f"http://127.0.0.1:{port}")
    process = subprocess.Popen(
        ["bash", "scripts/run.sh", "--host", "127.0.0.1", "--port", str(port), "--web-workers", "1"],
        cwd=REPO_ROOT, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    main = MainCommand(process, f"http://127.0.0.1:{port}", env, model_dir, log_path)
    try:
        wait_for(lambda: _answers(main), 180, "the main command's /health")
    except TimeoutError:
        stop_group(process)
        raise AssertionError(main.log()[-3000:]) from None
    return main


def _answers(main: MainCommand) -> bool:
    assert main.process.poll() is None, main.log()[-3000:]
    try:
        return requests.get(f"{main.url}/health", auth=AUTH, timeout=2).status_code in (200, 401)
    except requests.RequestException:
        return False


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    living = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            living.add(pid)
    return living


def command_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def stop_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def settled(main: MainCommand, project_id: int, after: float) -> dict:
    """The project's jobs all done and a selection finished after ``after``."""

    def check():
        status = main.get(f"/freesel/projects/{project_id}/status")
        last = status["last_selection_at"]
        idle = all(n == 0 for groups in status["jobs"].values() for n in groups.values())
        from datetime import datetime

        return status if idle and last and datetime.fromisoformat(last).timestamp() >= after else None

    return wait_for(check, 240, "patterns and selection to finish")


@pytest.fixture(scope="module")
def main_command(label_studio, tmp_path_factory):
    folder = tmp_path_factory.mktemp("main")
    env = backend_env("", label_studio.url, label_studio.pat, folder / "model_dir")
    env.update(BASIC_AUTH_USER=AUTH[0], BASIC_AUTH_PASS=AUTH[1], FREESEL_CHUNK_SIZE="4")
    main = start_main_command(folder / "model_dir", folder / "serve.log", env)
    try:
        yield main
    except BaseException:
        print(main.log()[-5000:])
        raise
    finally:
        main.process.send_signal(signal.SIGTERM)
        try:
            main.process.wait(timeout=90)
        finally:
            stop_group(main.process)


@pytest.fixture(scope="module")
def project(label_studio, main_command, tmp_path_factory):
    """A project of 10 images in two looks, connected in Label Studio's form with basic auth and
    extra params (budget 3, farthest-first), ranked."""
    ls = label_studio
    folder = tmp_path_factory.mktemp("images")
    created = ls.create_project("FreeSel main command", LABEL_CONFIG)
    images = write_group(folder, "red", 6, (200, 40, 40), "flat", 1) + write_group(
        folder, "green", 4, (40, 160, 40), "stripes", 2
    )
    ls.upload_images(created["id"], images)
    started = time.time()
    response = ls.api("POST", "/api/ml", json={
        "url": main_command.url, "project": created["id"], "title": "FreeSel",
        "auth_method": "BASIC_AUTH", "basic_auth_user": AUTH[0], "basic_auth_pass": AUTH[1],
        "extra_params": json.dumps({"budget": 3, "strategy": "fds"}),
    })
    assert response.status_code == 201, response.text
    settled(main_command, created["id"], started)
    return {
        **created,
        "ml_backend": response.json()["id"],
        "previous": (created["sampling"], created.get("model_version") or ""),
    }


def tasks_of(ls, project_id: int) -> list[dict]:
    return ls.api("GET", "/api/tasks/", params={"project": project_id, "page_size": 1000}).json()["tasks"]


def test_every_endpoint_wants_basic_auth_health_included(main_command):
    for method, path in (
        ("GET", "/health"),
        ("POST", "/setup"),
        ("POST", "/predict"),
        ("POST", "/webhook"),
        ("GET", "/freesel/projects/1/status"),
        ("GET", "/freesel/projects/1/report"),
        ("PATCH", "/freesel/projects/1/settings"),
    ):
        response = requests.request(method, f"{main_command.url}{path}", json={}, timeout=30)
        assert response.status_code == 401, (path, response.status_code)
        assert 'Basic realm="FreeSel"' in response.headers["WWW-Authenticate"]
        wrong = requests.request(method, f"{main_command.url}{path}", json={}, auth=(AUTH[0], "wrong"), timeout=30)
        assert wrong.status_code == 401
    assert requests.get(f"{main_command.url}/health", auth=AUTH, timeout=30).json()["status"] == "UP"
    assert "BASIC_AUTH_USER/BASIC_AUTH_PASS are not set" not in main_command.log()


def test_the_main_command_runs_a_worker_each_for_patterns_rankings_write_outs_and_cleanups(main_command):
    listening = [
        f"*** Listening on {queue}..."
        for queue in ("freesel-features", "freesel-selection", "freesel-writeout", "freesel-cleanup")
    ]
    wait_for(lambda: all(line in main_command.log() for line in listening), 300, "the four workers")
    assert "starting 4 workers" in main_command.log()


def test_label_studio_without_the_credentials_cannot_connect(label_studio, main_command):
    created = label_studio.create_project("FreeSel wrong password", LABEL_CONFIG)
    response = label_studio.api("POST", "/api/ml", json={
        "url": main_command.url, "project": created["id"], "title": "FreeSel",
        "auth_method": "BASIC_AUTH", "basic_auth_user": AUTH[0], "basic_auth_pass": "wrong",
    })
    assert response.status_code >= 400 or response.json()["state"] != "CO", response.text


def test_connected_with_basic_auth_next_serves_the_top_pick_and_every_ranked_task_shows_its_flag(
    label_studio, main_command, project
):
    ls, pid = label_studio, project["id"]
    ranking = current_ranking(ls, pid)
    assert len(ranking) == 10
    served = ls.api("GET", f"/api/projects/{pid}/next").json()
    assert served["id"] == ranking[0]
    flags = {task["id"]: task["data"].get("freesel") for task in tasks_of(ls, pid)}
    assert [flags[t] for t in ranking[:3]] == ["FreeSel pick"] * 3
    # the two looks are near-duplicates within each look: the rest says so, naming a pick; a task
    # that is merely not picked carries no flag
    near_duplicate_of_a_pick = {f"FreeSel: not picked (near-duplicate of task {t})" for t in ranking[:3]}
    assert all(flags[t] in {None} | near_duplicate_of_a_pick for t in ranking[3:])
    project_now = ls.api("GET", f"/api/projects/{pid}/").json()
    assert project_now["sampling"] == "Uncertainty sampling"
    log = main_command.log()
    assert re.search(r"project \d+: patterns for 4 tasks finished in [\d.]+ s \([\d.]+ tasks/s\): 4 ok, 0 failed", log)
    assert re.search(rf"project {pid}: selection freesel-\S+: 3 picks among 10 unlabelled tasks", log)


def test_project_status_cli_prints_progress_picks_and_jobs(main_command, project):
    text = main_command.cli(str(project["id"]), "status")
    print(text)
    assert f"project {project['id']}: FreeSel enabled (strategy fds, budget 3," in text
    assert "patterns: 10 of 10 tasks (100%), 0 failed" in text
    assert "last ranking: 3 picks, 10 tasks ranked" in text
    assert "jobs: none" in text
    raw = json.loads(main_command.cli(str(project["id"]), "status", "--json"))
    assert raw["progress"]["tasks_done"] == raw["progress"]["tasks_total"] == 10
    assert raw["progress"]["percent"] == 100.0


def retrieve_predictions(ls, project_id: int, selected: dict) -> None:
    """The Data Manager's "Retrieve Predictions" action (Label Studio calls /predict)."""
    response = ls.api("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": project_id},
                      json={"selectedItems": selected})
    assert response.status_code == 200, response.text


def test_retrieve_predictions_returns_the_stored_prediction_of_a_ranked_task(label_studio, main_command, project):
    ls, pid = label_studio, project["id"]
    lost = current_ranking(ls, pid)[1]
    stored_score = next(p["score"] for p in ls.api("GET", "/api/predictions/", params={"task": lost}).json())
    for prediction in ls.api("GET", "/api/predictions/", params={"task": lost}).json():
        ls.api("DELETE", f"/api/predictions/{prediction['id']}/")
    retrieve_predictions(ls, pid, {"all": False, "included": [lost]})
    again = ls.api("GET", "/api/predictions/", params={"task": lost}).json()
    assert [(p["score"], p["model_version"]) for p in again] == [
        (stored_score, ls.api("GET", f"/api/projects/{pid}/").json()["model_version"])
    ]
    assert current_ranking(ls, pid)[1] == lost


def test_retrieve_predictions_enqueues_tasks_the_backend_never_saw(label_studio, main_command, project, tmp_path):
    ls, pid = label_studio, project["id"]
    # New tasks reach the backend through the webhook and through /predict when a task list is
    # loaded or opened (Label Studio's "retrieve predictions automatically", "use predictions to
    # prelabel"); switch all three off here.
    for hook in ls.api("GET", "/api/webhooks/", params={"project": pid}).json():
        assert ls.api("DELETE", f"/api/webhooks/{hook['id']}/").status_code == 204
    ls.api(
        "PATCH",
        f"/api/projects/{pid}/",
        json={"evaluate_predictions_automatically": False, "show_collab_predictions": False},
    ).raise_for_status()
    new_ids = [t["id"] for t in ls.upload_images(pid, write_group(tmp_path, "blue", 2, (30, 30, 220), "checks", 4))]
    time.sleep(1)
    assert main_command.get(f"/freesel/projects/{pid}/status")["tasks"] == 10
    started = time.time()
    retrieve_predictions(ls, pid, {"all": True, "excluded": []})
    status = settled(main_command, pid, started)
    assert status["tasks"] == 12 and status["patterns_done"] == 12
    assert set(new_ids) <= set(current_ranking(ls, pid)), ls.api(
        "GET", "/api/predictions/", params={"project": pid}
    ).json()


def test_a_settings_change_recomputes_patterns_under_a_new_version_and_old_versions_expire(
    label_studio, main_command, project
):
    ls, pid = label_studio, project["id"]
    before = main_command.get(f"/freesel/projects/{pid}/status")
    started = time.time()
    response = requests.patch(
        f"{main_command.url}/freesel/projects/{pid}/settings", json={"patterns_per_image": 2}, auth=AUTH, timeout=30
    )
    assert response.status_code == 200 and response.json()["patterns_per_image"] == 2
    after = settled(main_command, pid, started)
    assert after["patterns_version"] != before["patterns_version"]
    assert after["patterns_done"] == after["tasks"] == 12
    assert after["model_version"] != before["model_version"]
    assert ls.api("GET", f"/api/projects/{pid}/").json()["model_version"] == after["model_version"]
    store = main_command.redis()
    old_ttl = store.ttl(f"freesel:{pid}:patterns:{before['patterns_version']}")
    assert 0 < old_ttl <= 24 * 3600
    assert store.ttl(f"freesel:{pid}:patterns:{after['patterns_version']}") == -1  # the current one stays

    started = time.time()  # the connect form's extra params: Label Studio sends them to /setup on save
    response = ls.api("PATCH", f"/api/ml/{project['ml_backend']}", json={"project": pid,  # what the form sends on save
        "url": main_command.url, "auth_method": "BASIC_AUTH", "basic_auth_user": AUTH[0], "basic_auth_pass": AUTH[1],
        "extra_params": json.dumps({"budget": 3, "strategy": "fds", "attention_ratio": 0.3})})
    assert response.status_code == 200, response.text
    again = settled(main_command, pid, started)
    assert again["settings"]["attention_ratio"] == 0.3 and again["settings"]["patterns_per_image"] == 2
    assert again["patterns_version"] not in (before["patterns_version"], after["patterns_version"])
    assert again["patterns_done"] == 12


def test_disable_from_the_cli_restores_sampling_and_removes_every_flag(label_studio, main_command, project):
    ls, pid = label_studio, project["id"]
    assert main_command.cli(str(pid), "disable").strip() == f"project {pid}: FreeSel disabled"
    project_now = ls.api("GET", f"/api/projects/{pid}/").json()
    assert (project_now["sampling"], project_now.get("model_version") or "") == project["previous"]

    def cleaned() -> bool:
        return all("freesel" not in t["data"] and "freesel_rank" not in t["data"] for t in tasks_of(ls, pid))

    wait_for(cleaned, 120, "flags removed from every task")
    assert not [
        v for v in ls.api("GET", f"/api/projects/{pid}/model-versions/").json() if str(v).startswith("freesel-")
    ]
    assert "FreeSel disabled" in main_command.cli(str(pid), "status")


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_stopping_the_main_command_ends_every_process_and_redis_data_survives_a_restart(label_studio, tmp_path, how):
    env = backend_env("", label_studio.url, label_studio.pat, tmp_path / "model_dir")
    first = start_main_command(tmp_path / "model_dir", tmp_path / "first.log", env)
    try:
        assert "WARNING" in first.log() and "BASIC_AUTH_USER/BASIC_AUTH_PASS are not set" in first.log()
        pid = label_studio.create_project(f"FreeSel restart {how}", LABEL_CONFIG)["id"]
        response = requests.patch(
            f"{first.url}/freesel/projects/{pid}/settings", json={"budget": 5, "strategy": "fds"}, timeout=30,
            **credentials(env),
        )
        assert response.status_code == 200, response.text
        tree = descendants(first.process.pid)
        commands = [command_of(pid) for pid in tree]
        assert any("redis-server" in c for c in commands) and any("freesel_backend worker" in c for c in commands)
        if how == "ctrl-c":
            os.killpg(first.process.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
        else:
            first.process.send_signal(signal.SIGTERM)  # `docker stop`, `kill`: the main process only
        stopping = time.monotonic()
        code = first.process.wait(timeout=90)
        print(f"{how}: stopped in {time.monotonic() - stopping:.1f} s, exit code {code}")
        wait_for(lambda: not alive(tree), 30, "every child process to end")
    finally:
        stop_group(first.process)
    assert list((tmp_path / "model_dir" / "redis").glob("appendonlydir/appendonly.aof.*"))

    second = start_main_command(tmp_path / "model_dir", tmp_path / "second.log", env)
    try:
        settings = requests.get(f"{second.url}/freesel/projects/{pid}/settings", timeout=30, **credentials(env)).json()
        assert (settings["budget"], settings["strategy"]) == (5, "fds")
    finally:
        second.process.send_signal(signal.SIGTERM)
        second.process.wait(timeout=90)
        stop_group(second.process)


def test_the_announced_url_follows_the_port_and_ctrl_c_during_start_up_ends_without_a_traceback(label_studio, tmp_path):
    env = backend_env("", label_studio.url, label_studio.pat, tmp_path / "model_dir")
    port = free_port()
    log_path = tmp_path / "run.log"
    process = subprocess.Popen(
        ["bash", "scripts/run.sh", "--host", "127.0.0.1", "--port", str(port), "--web-workers", "1"],
        cwd=REPO_ROOT, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for(lambda: "Label Studio reaches it at" in log_path.read_text(errors="replace"), 120, "the start-up line")
        time.sleep(2)  # the worker is still importing its libraries
        os.killpg(process.pid, signal.SIGINT)
        code = process.wait(timeout=90)
    finally:
        stop_group(process)
    log = log_path.read_text(errors="replace")
    print(log)
    assert f"Label Studio reaches it at http://localhost:{port})" in log
    assert code == 0
    assert "Traceback" not in log and "ConnectionError" not in log


def demo_env(model_dir: Path, label_studio_port: int) -> dict[str, str]:
    """A machine without Label Studio settings; the tiny random ViT keeps it CI-sized."""
    env = backend_env("", "", "", model_dir)
    for key in ("REDIS_URL", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"):
        env.pop(key)
    env.update(LABEL_STUDIO_PORT=str(label_studio_port), FREESEL_CHUNK_SIZE="100")
    return env


def start_demo(env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        ["bash", "scripts/run.sh", "--host", "127.0.0.1", "--port", str(port), "--web-workers", "1"],
        cwd=REPO_ROOT, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )

    def ready() -> bool:
        assert process.poll() is None, log_path.read_text(errors="replace")[-5000:]
        return "Label All Tasks serves FreeSel's picks first" in log_path.read_text(errors="replace")

    try:
        wait_for(ready, 900, "the demo's first ranking")
    except BaseException:
        stop_group(process)
        raise
    return process


def ctrl_c(process: subprocess.Popen[bytes]) -> None:
    tree = descendants(process.pid)
    os.killpg(process.pid, signal.SIGINT)  # the terminal's Ctrl-C; what it started runs in sessions of its own
    assert process.wait(timeout=120) == 0
    wait_for(lambda: not alive(tree), 60, "every process the demo started to end")


class LabelStudioApi:
    """The local Label Studio's REST API with the token the demo printed."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        # access tokens live minutes: a fresh one per call
        access = requests.post(f"{self.url}/api/token/refresh/", json={"refresh": self.token}, timeout=30).json()[
            "access"
        ]
        return requests.request(
            method, f"{self.url}{path}", headers={"Authorization": f"Bearer {access}"}, timeout=60, **kwargs
        )

    def project(self, title: str) -> dict:
        return next(
            p
            for p in self.api("GET", "/api/projects/", params={"page_size": 100}).json()["results"]
            if p["title"] == title
        )

    def task_count(self, project_id: int) -> int:
        return self.api("GET", "/api/tasks/", params={"project": project_id, "page_size": 1}).json()["total"]


@pytest.mark.integration
def test_run_sh_without_label_studio_settings_shows_a_ranked_demo_project_and_a_second_run_reuses_it(tmp_path):
    from tests.test_quickstart import run_quickstart, write_tiny_images

    model_dir, port, ls_port = tmp_path / "model_dir", free_port(), free_port()
    env = demo_env(model_dir, ls_port)
    first = start_demo(env, port, tmp_path / "first.log")
    try:
        log = (tmp_path / "first.log").read_text()
        admin = json.loads((model_dir / "label-studio" / "freesel-admin.json").read_text())
        assert (
            admin["url"] == f"http://localhost:{ls_port}"
            and f"API token (Personal Access Token): {admin['token']}" in log
        )
        assert f"Open http://localhost:{ls_port}, project 'FreeSel demo'" in log
        ls = LabelStudioApi(admin["url"], admin["token"])
        demo = ls.project("FreeSel demo")
        samples = len(list((model_dir / "sample_images").glob("*.jpg")))
        assert samples >= 50 and ls.task_count(demo["id"]) == samples
        assert ls.api("GET", f"/api/projects/{demo['id']}/").json()["sampling"] == "Uncertainty sampling"
        assert ls.api("GET", f"/api/projects/{demo['id']}/next").json()["id"] == current_ranking(ls, demo["id"])[0]

        folder = tmp_path / "own"
        write_tiny_images(folder, 500)
        own = run_quickstart({**env, "MODEL_DIR": str(model_dir)}, str(folder), "--backend-url", f"http://localhost:{port}",
                             "--settings", json.dumps({"budget": 10}))
        assert own.returncode == 0, own.stderr[-3000:]
        assert "FreeSel ranked 500 tasks of project 'own'" in own.stdout
        assert (
            ls.api("GET", f"/api/projects/{ls.project('own')['id']}/next").json()["id"]
            == current_ranking(ls, ls.project("own")["id"])[0]
        )
        ctrl_c(first)
    finally:
        stop_group(first)
    first_log = (tmp_path / "first.log").read_text()
    assert "Traceback" not in first_log, first_log[-5000:]

    second = start_demo(env, port, tmp_path / "second.log")
    try:
        log = (tmp_path / "second.log").read_text()
        assert admin["token"] not in log and "password and token in" in log
        assert json.loads((model_dir / "label-studio" / "freesel-admin.json").read_text()) == admin
        ls = LabelStudioApi(admin["url"], admin["token"])
        assert ls.project("FreeSel demo")["id"] == demo["id"] and ls.task_count(demo["id"]) == samples
        assert f"{samples} images already in the project: skipped" in log
        assert len(ls.api("GET", "/api/ml", params={"project": demo["id"]}).json()) == 1
        assert ls.api("GET", f"/api/projects/{demo['id']}/next").json()["id"] == current_ranking(ls, demo["id"])[0]
        ctrl_c(second)
    finally:
        stop_group(second)
