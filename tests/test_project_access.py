"""Nobody reads or changes a project through the backend without Label Studio's leave: Label
Studio's own calls are open, every project route wants a Label Studio token whose user may see the
project (or the backend's basic auth), and a signed link opens one project's report for a day.
A real Label Studio decides; a real gunicorn serves."""

from __future__ import annotations

import subprocess
import sys
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from freesel_backend.server.access import sign_report_link
from freesel_backend.server.settings import Settings
from harness.backend import REPO_ROOT, BackendProcesses, backend_env, wait_for
from harness.label_studio import LABEL_CONFIG
from tests.test_security import fake_jwt

pytestmark = pytest.mark.slow

AUTH_CACHE_S = 3
PROJECT_ROUTES = [
    ("GET", "status"), ("GET", "report"), ("GET", "settings"), ("PATCH", "settings"), ("PUT", "settings"),
    ("POST", "enable"), ("POST", "disable"), ("POST", "reselect"), ("POST", "report-link"),
]


@pytest.fixture(scope="module")
def guarded(label_studio, redis_url, tmp_path_factory):
    """The backend (no worker) and a project of the Label Studio admin that it knows."""
    folder = tmp_path_factory.mktemp("access")
    env = backend_env(redis_url, label_studio.url, label_studio.pat, folder / "model_dir")
    env["FREESEL_AUTH_CACHE_S"] = str(AUTH_CACHE_S)
    backend = BackendProcesses(env, folder).start(workers=0)
    project_id = label_studio.create_project("FreeSel access", LABEL_CONFIG)["id"]
    setup = requests.post(f"{backend.url}/setup", json={"project": f"{project_id}.1", "schema": LABEL_CONFIG},
                          timeout=60)
    assert setup.status_code == 200, setup.text
    yield backend, project_id
    backend.stop()


def call(backend: BackendProcesses, method: str, project_id: int, action: str, token: str | None = None,
         scheme: str = "Bearer") -> requests.Response:
    headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
    body = {} if method in ("POST", "PUT", "PATCH") else None
    return requests.request(method, f"{backend.url}/freesel/projects/{project_id}/{action}", json=body,
                            headers=headers, timeout=60)


def test_label_studios_own_calls_are_open_and_health_tells_nothing_else(guarded):
    backend, project_id = guarded
    health = requests.get(f"{backend.url}/health", timeout=30)
    assert health.status_code == 200 and health.json() == {"status": "UP", "model_class": "FreeSelModel"}
    predict = requests.post(f"{backend.url}/predict", json={"project": f"{project_id}.1", "tasks": []}, timeout=30)
    assert predict.status_code == 200 and predict.json()["results"] == []


def test_label_studio_connects_and_lists_the_backends_model_version_through_the_open_routes(guarded, label_studio):
    backend, project_id = guarded
    connected = label_studio.api("POST", "/api/ml", json={"url": backend.url, "project": project_id, "title": "F"})
    assert connected.status_code == 201 and connected.json()["state"] == "CO", connected.text
    versions = label_studio.api("GET", f"/api/ml/{connected.json()['id']}/versions")
    assert versions.status_code == 200 and versions.json()["versions"] == [connected.json()["model_version"]]


@pytest.mark.parametrize(("method", "action"), PROJECT_ROUTES)
def test_every_project_route_answers_401_without_a_credential(guarded, method, action):
    backend, project_id = guarded
    response = call(backend, method, project_id, action)
    assert response.status_code == 401, response.text
    assert "Label Studio token" in response.json()["error"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("scheme", "token"), [("Token", "made-up"), ("Bearer", "made-up"), ("Bearer", "jwt")])
def test_a_made_up_token_is_refused_with_401(guarded, scheme, token):
    backend, project_id = guarded
    response = call(backend, "GET", project_id, "status", fake_jwt() if token == "jwt" else token, scheme)
    assert response.status_code == 401 and "does not accept this token" in response.json()["error"]


def test_the_projects_own_user_reads_and_changes_it_with_a_personal_access_token_or_a_legacy_token(
    guarded, label_studio
):
    backend, project_id = guarded
    assert call(backend, "GET", project_id, "status", label_studio.pat).status_code == 200
    changed = requests.patch(f"{backend.url}/freesel/projects/{project_id}/settings", json={"budget": 7},
                             headers={"Authorization": f"Bearer {label_studio.pat}"}, timeout=60)
    assert changed.status_code == 200 and changed.json()["budget"] == 7
    assert call(backend, "GET", project_id, "settings", label_studio.legacy_token, "Token").json()["budget"] == 7


def test_a_user_label_studio_does_not_let_see_the_project_gets_403_and_changes_nothing(guarded, label_studio):
    backend, project_id = guarded
    session = label_studio.sign_up("another-team@example.com")
    label_studio.move_to_own_organization("another-team@example.com")
    outsider = label_studio.create_pat(session)
    assert label_studio.api("GET", f"/api/projects/{project_id}/").status_code == 200  # the admin still sees it
    before = call(backend, "GET", project_id, "settings", label_studio.pat).json()
    for method, action in PROJECT_ROUTES:
        response = call(backend, method, project_id, action, outsider)
        assert response.status_code == 403, (action, response.text)
        assert f"does not let this token's user see project {project_id}" in response.json()["error"]
    assert call(backend, "GET", project_id, "settings", label_studio.pat).json() == before


def test_a_revoked_token_is_refused_within_the_cache_time(guarded, label_studio):
    backend, project_id = guarded
    session = label_studio.sign_up("colleague@example.com")  # joins the admin's organization
    token = label_studio.create_pat(session)
    assert call(backend, "GET", project_id, "status", token).status_code == 200
    label_studio.revoke_pat(session, token)
    revoked = time.monotonic()
    wait_for(lambda: call(backend, "GET", project_id, "status", token).status_code == 401, AUTH_CACHE_S + 10,
             "the revoked token to be refused")
    assert time.monotonic() - revoked <= AUTH_CACHE_S + 2


def test_a_signed_report_link_opens_that_projects_report_only_until_it_expires(guarded, label_studio):
    backend, project_id = guarded
    link = call(backend, "POST", project_id, "report-link", label_studio.pat).json()["url"]
    assert link.startswith(f"{backend.url}/freesel/projects/{project_id}/report?")
    opened = requests.get(link, timeout=60)
    assert opened.status_code == 409 and "has no FreeSel ranking yet" in opened.json()["error"]  # let in
    query = parse_qs(urlsplit(link).query)
    tampered = requests.get(link[:-4] + "0000", timeout=30)
    other_project = requests.get(f"{backend.url}/freesel/projects/{project_id + 1}/report", params=query, timeout=30)
    other_route = requests.get(f"{backend.url}/freesel/projects/{project_id}/settings", params=query, timeout=30)
    secret = Settings.from_env(backend.env).report_link_secret
    expired, _ = sign_report_link(secret, backend.url, project_id, now=time.time() - 2 * 24 * 3600)
    for refused in (tampered, other_project, other_route, requests.get(expired, timeout=30)):
        assert refused.status_code == 401, refused.text


def test_the_cli_passes_its_label_studio_token_and_says_what_to_do_when_refused(guarded, label_studio):
    backend, project_id = guarded

    def cli(api_key: str) -> subprocess.CompletedProcess[str]:
        env = {**backend.env, "LABEL_STUDIO_API_KEY": api_key}
        return subprocess.run([sys.executable, "-m", "freesel_backend", "project", str(project_id), "status",
                               "--url", backend.url], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=120)

    allowed = cli(label_studio.pat)
    assert allowed.returncode == 0 and f"project {project_id}: FreeSel enabled" in allowed.stdout, allowed.stderr
    refused = cli("made-up")
    assert refused.returncode != 0 and "does not accept this token" in refused.stderr
    assert "LABEL_STUDIO_API_KEY" in refused.stderr
