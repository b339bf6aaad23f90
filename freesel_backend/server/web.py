"""The web service: Label Studio's ML backend protocol (``/health``, ``/setup``, ``/predict``,
``/webhook`` and the calls Label Studio makes of a backend that does not train) and the admin
and report routes under ``/freesel/projects/<id>/``, on Flask.

Gunicorn: ``gunicorn 'freesel_backend.server.web:create_app()'``.

Who may call what:

* Label Studio's own calls are open, or behind the backend's basic auth where it is configured
  (Label Studio sends it from the connect form); ``/webhook`` also needs the webhook secret.
* The project routes need a Label Studio token whose user may see the project (``access.py``),
  or the backend's basic auth; a signed report link opens that project's report.

Every error is a JSON object ``{"error": "..."}`` with a 4xx status that names the problem, or a
502/503 when Label Studio fails; a request never shows a traceback.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

import redis
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from . import admin, report_job
from .access import AccessDenied, ProjectAccess, sign_report_link, token_of, valid_report_link
from .settings import WEBHOOK_SECRET_HEADER, Settings, SettingsError
from ..labelstudio.client import LabelStudioError, LabelStudioNotFound
from .model import FreeSelModel, project_id_of
from .services import Services

log = logging.getLogger(__name__)

MODEL_CLASS = "FreeSelModel"
protocol_routes = Blueprint("protocol", __name__)
project_routes = Blueprint("freesel", __name__, url_prefix="/freesel/projects/<int:project_id>")


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    if not settings.redis_url:
        raise SettingsError("REDIS_URL is not set (python -m freesel_backend serve starts an embedded Redis)")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.config["FREESEL_SERVICES"] = Services(settings, redis.Redis.from_url(settings.redis_url))
    app.config["FREESEL_ACCESS"] = ProjectAccess(settings.label_studio_url, settings.auth_cache_s)
    app.before_request(_check_body)
    app.register_blueprint(protocol_routes)
    app.register_blueprint(project_routes)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(ValueError, _bad_input)  # SettingsError and LabelConfigError among them
    app.register_error_handler(AccessDenied, _access_denied)
    app.register_error_handler(LabelStudioError, _label_studio_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


def _services() -> Services:
    return current_app.config["FREESEL_SERVICES"]


def _model(project: Any, label_config: Any = None) -> FreeSelModel:
    if label_config is not None and not isinstance(label_config, str):
        raise ValueError(f"the label config must be a string of XML, got {type(label_config).__name__}")
    return FreeSelModel(label_config=label_config, project_id=project_id_of(project), services=_services())


# ---- errors -------------------------------------------------------------------------------------


def _error(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _http_error(error: HTTPException) -> Response:
    """Werkzeug's own answers (404, 405, 413, a body that is not JSON...) as JSON."""
    return _error(error.description or error.name, error.code or 500)


def _bad_input(error: ValueError) -> Response:
    return _error(str(error), 400)


def _access_denied(error: AccessDenied) -> Response:
    return _error(str(error), error.status, _challenge() if error.status == 401 else None)


def _label_studio_error(error: LabelStudioError) -> Response:
    if isinstance(error, LabelStudioNotFound):
        return _error(f"not found in Label Studio: {error}", 404)
    log.error("Label Studio request failed: %s", error)
    return _error(f"Label Studio request failed: {error}", 502)


def _unexpected_error(error: Exception) -> Response:
    log.exception("unexpected error in %s %s", request.method, request.path)
    return _error(f"internal error ({type(error).__name__}); the backend's log has the details", 500)


# ---- what every request must pass -----------------------------------------------------------------


def _check_body() -> Response | None:
    """Only JSON bodies of bounded size: no form or multipart parsing ever runs."""
    if request.method not in ("POST", "PUT", "PATCH"):
        return None
    if request.content_length is None and request.headers.get("Transfer-Encoding"):
        return _error("chunked request bodies are not accepted: send Content-Length", 411)
    if not request.content_length:
        return None
    limit = _services().settings.max_request_bytes
    if request.content_length > limit:
        return _error(
            f"request body of {request.content_length} bytes exceeds the {limit}-byte limit "
            "(FREESEL_MAX_REQUEST_BYTES)",
            413,
        )
    if request.mimetype != "application/json":
        return _error(
            f"request bodies must be JSON (Content-Type: application/json), got {request.mimetype or 'none'}", 415
        )
    return None


def _challenge() -> dict[str, str]:
    schemes = ['Bearer realm="FreeSel"'] + (['Basic realm="FreeSel"'] if _services().settings.basic_auth else [])
    return {"WWW-Authenticate": ", ".join(schemes)}


def _has_basic_auth() -> bool:
    expected = _services().settings.basic_auth
    given = request.authorization
    return bool(
        expected
        and given
        and given.type == "basic"
        and hmac.compare_digest(given.username or "", expected[0])
        and hmac.compare_digest(given.password or "", expected[1])
    )


@protocol_routes.before_request
def _check_basic_auth() -> Response | None:
    """Label Studio's calls: behind basic auth where the backend has it."""
    if _services().settings.basic_auth is None or _has_basic_auth():
        return None
    return _error("authentication required: the backend's basic auth (BASIC_AUTH_USER)", 401,
                  {"WWW-Authenticate": 'Basic realm="FreeSel"'})


@project_routes.before_request
def _check_project_access() -> None:
    """A project's routes: a Label Studio token whose user may see the project, the backend's basic
    auth, or (the report only) a signed link."""
    project_id = int((request.view_args or {})["project_id"])
    if _has_basic_auth() or _signed_report_link(project_id):
        return
    token = token_of(request.headers.get("Authorization"))
    if token is None:
        raise AccessDenied(401, "authentication required: a Label Studio token (Authorization: Bearer <token>) "
                                "whose user may see this project, or the backend's basic auth")
    current_app.config["FREESEL_ACCESS"].check(token, project_id)


def _signed_report_link(project_id: int) -> bool:
    return request.endpoint == "freesel.report_view" and valid_report_link(
        _services().settings.report_link_secret, project_id, request.args.get("expires"), request.args.get("signature")
    )


# ---- Label Studio's ML backend protocol -------------------------------------------------------------


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    return body


@protocol_routes.route("/", methods=["GET"])
@protocol_routes.route("/health", methods=["GET"])
def health_view() -> Any:
    return jsonify({"status": "UP", "model_class": MODEL_CLASS})


@protocol_routes.route("/setup", methods=["POST"])
def setup_view() -> Any:
    body = _json_body()
    extra = body.get("extra_params")
    if isinstance(extra, str):
        try:
            extra = json.loads(extra) if extra.strip() else {}
        except ValueError as error:
            raise SettingsError(f"extra params must be a JSON object of FreeSel settings: {error}") from None
    if extra is not None and not isinstance(extra, dict):
        raise SettingsError(f"extra params must be a JSON object of FreeSel settings, got {type(extra).__name__}")
    version = _model(body.get("project"), body.get("schema")).setup(extra)
    return jsonify({"model_version": version})


def _tasks_of(body: dict[str, Any], required: bool) -> list[dict[str, Any]]:
    """``body["tasks"]``, checked: a list of task objects with whole-number ids."""
    tasks = body.get("tasks")
    if tasks is None and not required:
        return []
    if not isinstance(tasks, list):
        raise ValueError(f"'tasks' must be a list of task objects, got {type(tasks).__name__}")
    for position, task in enumerate(tasks):
        task_id = task.get("id") if isinstance(task, dict) else None
        if isinstance(task_id, bool) or not isinstance(task_id, int):
            raise ValueError(f"tasks[{position}] must be a task object with a whole-number 'id', got {str(task)[:80]}")
    return tasks


@protocol_routes.route("/predict", methods=["POST"])
def predict_view() -> Any:
    body = _json_body()
    model = _model(body.get("project"), body.get("label_config"))
    return jsonify({"results": model.predict(_tasks_of(body, required=False)), "model_version": model.model_version()})


@protocol_routes.route("/webhook", methods=["POST"])
def webhook_view() -> Any:
    given = request.headers.get(WEBHOOK_SECRET_HEADER, "")
    if not hmac.compare_digest(given.encode(), _services().settings.webhook_secret.encode()):
        return _error(f"webhook without the right {WEBHOOK_SECRET_HEADER} header (FreeSel registers its webhook "
                      "with it)", 401)
    body = _json_body()
    event = body.get("action")
    if not isinstance(event, str) or not event:
        raise ValueError(f"webhook payload needs an 'action' string, got {event!r}")
    project = body.get("project")
    if project is None:
        raise ValueError(f"{event}: webhook payload has no 'project'")
    if event == "TASKS_CREATED":
        _tasks_of(body, required=True)
    return jsonify(_model(project).process_event(event, body)), 201


@protocol_routes.route("/versions", methods=["GET", "POST"])
def versions_view() -> Any:
    """The project's model version (``?project=<id>`` or a JSON body's ``project``). Label Studio 1.23.2
    names no project here: the 404 makes it list the version its connection already has."""
    body = request.get_json(silent=True) if request.method == "POST" else None
    project = request.args.get("project") or (body.get("project") if isinstance(body, dict) else None)
    if project is None:
        return _error("versions are listed per project: GET /versions?project=<id>", 404)
    return jsonify({"versions": [_model(project).model_version()], "model_class": MODEL_CLASS})


@protocol_routes.route("/train", methods=["POST"])
def train_view() -> Any:
    """FreeSel learns nothing from labels: they re-rank the pool through the webhook instead."""
    _json_body()
    return jsonify({"status": "ok", "message": "FreeSel needs no training: labels re-rank the pool as they arrive"})


# ---- a project's admin and report routes ------------------------------------------------------------


def _unknown_project(project_id: int) -> Response | None:
    if project_id in _services().store.project_ids():
        return None
    return _error(f"project {project_id} is not known to FreeSel: connect the backend to it in Label Studio", 404)


@project_routes.route("/status", methods=["GET"])
def status_view(project_id: int) -> Any:
    unknown = _unknown_project(project_id)
    return unknown if unknown is not None else jsonify(admin.status(_services(), project_id))


# The report inlines everything: a browser showing it may load nothing from anywhere.
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
REPORT_RETRY_S = 5


@project_routes.route("/report", methods=["GET"])
def report_view(project_id: int) -> Any:
    """The selection report (HTML) of the current selection run; 202 while a worker builds it."""
    unknown = _unknown_project(project_id)
    if unknown is not None:
        return unknown
    services = _services()
    try:
        answer = report_job.stored_report_or_job(services, project_id)
    except report_job.NoSelectionYet as error:
        return _error(str(error), 409)
    if isinstance(answer, str):
        return Response(answer, mimetype="text/html", headers={"Content-Security-Policy": REPORT_CSP,
                                                               "Referrer-Policy": "no-referrer"})
    response = jsonify(
        {
            "status": "building",
            "job": answer.id,
            "message": f"the report of project {project_id}'s current selection is being built by a worker: retry in "
            "a few seconds",
            "retry_after_s": REPORT_RETRY_S,
        }
    )
    response.status_code = 202
    response.headers["Retry-After"] = str(REPORT_RETRY_S)
    return response


@project_routes.route("/report-link", methods=["POST"])
def report_link_view(project_id: int) -> Any:
    """A link that opens the project's report in a browser without a credential, for a day."""
    unknown = _unknown_project(project_id)
    if unknown is not None:
        return unknown
    settings = _services().settings
    url, expires_at = sign_report_link(settings.report_link_secret, settings.public_url, project_id)
    return jsonify({"url": url, "expires_at": expires_at})


@project_routes.route("/enable", methods=["POST"])
def enable_view(project_id: int) -> Any:
    return jsonify({"settings": admin.enable(_services(), project_id).to_dict()})


@project_routes.route("/disable", methods=["POST"])
def disable_view(project_id: int) -> Any:
    return jsonify({"settings": admin.disable(_services(), project_id).to_dict()})


@project_routes.route("/reselect", methods=["POST"])
def reselect_view(project_id: int) -> Any:
    return jsonify({"selection_job": admin.reselect(_services(), project_id)}), 202


@project_routes.route("/settings", methods=["GET", "PUT", "PATCH"])
def settings_view(project_id: int) -> Any:
    services = _services()
    if request.method == "GET":
        return jsonify(services.store.get_settings(project_id).to_dict())
    changes = _json_body()
    if request.method == "PUT":  # PUT = the whole settings object: unnamed fields go back to defaults
        changes = {**admin.ProjectSettings().to_dict(), **changes}
    return jsonify(admin.apply_settings(services, project_id, changes).to_dict())
