"""Bad requests never get a 500: every route answers malformed JSON, wrong types, unknown projects,
oversized or non-JSON bodies and broken label configs with a 4xx JSON error that names the problem,
and the server goes on serving. A real gunicorn, a real Label Studio (unknown projects are
unknown to it), the backend's basic auth as the one credential."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from harness.backend import BackendProcesses, backend_env
from harness.label_studio import LABEL_CONFIG

pytestmark = pytest.mark.slow

AUTH = ("operator", "s3cret")
MAX_BODY = 50_000
NOT_JSON = {"data": b"{not json", "headers": {"Content-Type": "application/json"}}
BROKEN_CONFIG = '<View><Image name="image" value="$image"><Choices'


@pytest.fixture(scope="module")
def backend_and_project(label_studio, redis_url, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-requests")
    env = backend_env(redis_url, label_studio.url, label_studio.pat, folder / "model_dir")
    env.update(BASIC_AUTH_USER=AUTH[0], BASIC_AUTH_PASS=AUTH[1], FREESEL_MAX_REQUEST_BYTES=str(MAX_BODY))
    backend = BackendProcesses(env, folder).start(workers=0)
    project_id = label_studio.create_project("FreeSel bad requests", LABEL_CONFIG)["id"]
    setup = requests.post(f"{backend.url}/setup", json={"project": f"{project_id}.1", "schema": LABEL_CONFIG},
                          auth=AUTH, timeout=60)
    assert setup.status_code == 200, setup.text
    yield backend, project_id
    backend.stop()


def setup_body(**fields: Any) -> dict[str, Any]:
    return {"json": {"project": "{pid}.1", "schema": LABEL_CONFIG, **fields}}


# (method, path, requests keyword arguments, status, words the error must hold); "{pid}" is the known project
BAD_REQUESTS = [
    ("POST", "/setup", NOT_JSON, 400, "must be a JSON object"),
    ("POST", "/setup", {"json": [1, 2]}, 400, "must be a JSON object"),
    ("POST", "/setup", setup_body(schema=BROKEN_CONFIG), 400, "not valid XML"),
    ("POST", "/setup", setup_body(schema="<View><Text name='t' value='$t'/></View>"), 400, "no <Image"),
    ("POST", "/setup", setup_body(schema=12), 400, "label config must be a string"),
    ("POST", "/setup", setup_body(project="abc"), 400, "cannot read a project id"),
    ("POST", "/setup", setup_body(project=None), 400, "cannot read a project id"),
    ("POST", "/setup", setup_body(extra_params="{budget"), 400, "extra params must be a JSON object"),
    ("POST", "/setup", setup_body(extra_params=[1]), 400, "extra params must be a JSON object"),
    ("POST", "/setup", setup_body(extra_params={"budget": "lots"}), 400, "budget"),
    ("POST", "/setup", setup_body(extra_params={"no_such_setting": 1}), 400, "no_such_setting"),
    ("POST", "/setup", {"json": {"project": "987654.1", "schema": LABEL_CONFIG}}, 404, "not found in Label Studio"),
    ("POST", "/predict", NOT_JSON, 400, "must be a JSON object"),
    ("POST", "/predict", {"json": {"project": "{pid}.1", "tasks": "1,2"}}, 400, "'tasks' must be a list"),
    ("POST", "/predict", {"json": {"project": "{pid}.1", "tasks": [{"id": "7"}]}}, 400, r"tasks[0] must be"),
    ("POST", "/predict", {"json": {"project": "{pid}.1", "tasks": [None]}}, 400, r"tasks[0] must be"),
    ("POST", "/predict", {"json": {"project": {"id": []}, "tasks": []}}, 400, "cannot read a project id"),
    ("POST", "/predict", {"json": {"project": "{pid}.1", "label_config": 5}}, 400, "label config must be a string"),
    ("POST", "/predict", {"json": {"pad": "x" * MAX_BODY}}, 413, "exceeds the 50000-byte limit"),
    ("POST", "/predict", {"data": b"tasks=1", "headers": {"Content-Type": "text/plain"}}, 415, "must be JSON"),
    ("POST", "/train", NOT_JSON, 400, "must be a JSON object"),
    ("GET", "/versions?project=abc", {}, 400, "cannot read a project id"),
    ("GET", "/versions", {}, 404, "listed per project"),
    ("DELETE", "/health", {}, 405, "method is not allowed"),
    ("GET", "/no/such/route", {}, 404, "not found"),
    ("GET", "/freesel/projects/abc/status", {}, 404, "not found"),
    ("GET", "/freesel/projects/123456/status", {}, 404, "not known to FreeSel"),
    ("GET", "/freesel/projects/123456/report", {}, 404, "not known to FreeSel"),
    ("POST", "/freesel/projects/123456/report-link", {}, 404, "not known to FreeSel"),
    ("POST", "/freesel/projects/123456/enable", {"json": {}}, 404, "not found in Label Studio"),
    ("PATCH", "/freesel/projects/{pid}/settings", NOT_JSON, 400, "must be a JSON object"),
    ("PATCH", "/freesel/projects/{pid}/settings", {"json": ["budget", 5]}, 400, "must be a JSON object"),
    ("PATCH", "/freesel/projects/{pid}/settings", {"json": {"budget": "abc"}}, 400, "budget"),
    ("PATCH", "/freesel/projects/{pid}/settings", {"json": {"strategy": 3}}, 400, "strategy"),
    ("PATCH", "/freesel/projects/{pid}/settings", {"json": {"enabled": "maybe"}}, 400, "enabled"),
    ("PATCH", "/freesel/projects/{pid}/settings", {"json": {"patterns_per_image": -1}}, 400, "patterns_per_image"),
    ("PUT", "/freesel/projects/{pid}/settings", {"json": {"duplicate_threshold": [0.1]}}, 400, "duplicate_threshold"),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "words"), BAD_REQUESTS,
                         ids=[f"{m} {p} {s}" for m, p, _, s, _ in BAD_REQUESTS])
def test_a_bad_request_gets_a_4xx_json_error_naming_the_problem(backend_and_project, method, path, kwargs, status,
                                                                 words):
    backend, project_id = backend_and_project
    response = send(backend, project_id, method, path, kwargs)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert words.lower() in response.json()["error"].lower(), response.text


def test_the_server_keeps_serving_and_the_projects_settings_are_unchanged_after_bad_requests(backend_and_project):
    backend, project_id = backend_and_project
    before = backend.admin("GET", project_id, "settings").json()
    for method, path, kwargs, _, _ in BAD_REQUESTS:
        send(backend, project_id, method, path, kwargs)
    health = requests.get(f"{backend.url}/health", auth=AUTH, timeout=30)
    assert health.status_code == 200 and health.json() == {"status": "UP", "model_class": "FreeSelModel"}
    assert backend.admin("GET", project_id, "settings").json() == before
    assert "Traceback" not in backend.logs()


def send(backend: BackendProcesses, project_id: int, method: str, path: str, kwargs: dict[str, Any]
         ) -> requests.Response:
    """One of BAD_REQUESTS with the operator's credential, "{pid}" standing for the known project."""
    body = kwargs.get("json")
    if isinstance(body, dict) and body.get("project") == "{pid}.1":
        kwargs = {**kwargs, "json": {**body, "project": f"{project_id}.1"}}
    return requests.request(method, backend.url + path.replace("{pid}", str(project_id)), auth=AUTH, timeout=60,
                            **kwargs)
