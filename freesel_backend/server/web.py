"""The web service: label-studio-ml's app (``/health``, ...) with FreeSel's ``/setup``,
``/predict`` and ``/webhook`` and the admin routes under ``/freesel/projects/<id>/``.

Gunicorn: ``gunicorn 'freesel_backend.server.web:create_app()'``.

label-studio-ml 1.0.9 keeps one model object for the whole process and drops ``extra_params``
from /setup, so its three protocol views are replaced with views that build a
:class:`FreeSelModel` for the request's project.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any, Callable

import redis
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from label_studio_ml.api import init_app

from . import admin, report_job
from .settings import WEBHOOK_SECRET_HEADER, Settings, SettingsError
from ..labelstudio.client import LabelStudioError, LabelStudioNotFound
from ..labelstudio.label_config import LabelConfigError
from .model import FreeSelModel, project_id_of
from .services import Services

log = logging.getLogger(__name__)

freesel_routes = Blueprint("freesel", __name__, url_prefix="/freesel/projects/<int:project_id>")


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    if not settings.redis_url:
        raise SettingsError("REDIS_URL is not set (python -m freesel_backend serve starts an embedded Redis)")
    app = init_app(FreeSelModel, model_dir=str(settings.model_dir))
    app.debug = False  # never the Werkzeug debugger (CVE-2024-34069); gunicorn serves the app
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.config["FREESEL_SERVICES"] = Services(settings, redis.Redis.from_url(settings.redis_url))
    app.view_functions["_setup"] = _with_errors(setup_view)
    app.view_functions["_predict"] = _with_errors(predict_view)
    app.view_functions["webhook"] = _with_errors(webhook_view)
    if "freesel" not in app.blueprints:
        app.register_blueprint(freesel_routes)
        app.before_request(_check_basic_auth)
        app.before_request(_check_body)
    return app


def _services() -> Services:
    return current_app.config["FREESEL_SERVICES"]


def _model(project: Any, label_config: str | None = None) -> FreeSelModel:
    return FreeSelModel(label_config=label_config, project_id=project_id_of(project), services=_services())


def _check_basic_auth() -> Response | None:
    expected = _services().settings.basic_auth
    if expected is None:
        return None
    given = request.authorization
    if (
        given
        and hmac.compare_digest(given.username or "", expected[0])
        and hmac.compare_digest(given.password or "", expected[1])
    ):
        return None
    response = jsonify({"error": "authentication required"})
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Basic realm="FreeSel"'
    return response


def _error(message: str, status: int) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    return response


def _check_body() -> Response | None:
    """Only JSON bodies of bounded size: no form/multipart parsing ever runs (the Werkzeug 2.0
    multipart parser has known denial-of-service bugs, see docs/reliability.md)."""
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


def _with_errors(view: Callable[..., Any]) -> Callable[..., Any]:
    """Clear JSON errors: 400 for bad input, 502 when Label Studio fails."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return view(*args, **kwargs)
        except (SettingsError, LabelConfigError, ValueError) as error:
            return jsonify({"error": str(error)}), 400
        except LabelStudioNotFound as error:
            return jsonify({"error": f"not found in Label Studio: {error}"}), 404
        except LabelStudioError as error:
            log.error("Label Studio request failed: %s", error)
            return jsonify({"error": f"Label Studio request failed: {error}"}), 502

    wrapped.__name__ = view.__name__
    return wrapped


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    return body


def setup_view() -> Any:
    body = _json_body()
    extra = body.get("extra_params")
    if isinstance(extra, str):
        try:
            extra = json.loads(extra) if extra.strip() else {}
        except ValueError as error:
            raise SettingsError(f"extra params must be a JSON object of FreeSel settings: {error}") from None
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


def predict_view() -> Any:
    body = _json_body()
    model = _model(body.get("project"), body.get("label_config"))
    return jsonify({"results": model.predict(_tasks_of(body, required=False)), "model_version": model.model_version()})


def _check_webhook_secret() -> None:
    given = request.headers.get(WEBHOOK_SECRET_HEADER, "")
    if not hmac.compare_digest(given.encode(), _services().settings.webhook_secret.encode()):
        raise PermissionError(
            f"webhook without the right {WEBHOOK_SECRET_HEADER} header (FreeSel registers its webhook with it)"
        )


def webhook_view() -> Any:
    try:
        _check_webhook_secret()
    except PermissionError as error:
        return _error(str(error), 401)
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


def _unknown_project(project_id: int) -> Response | None:
    if project_id in _services().store.project_ids():
        return None
    return _error(f"project {project_id} is not known to FreeSel: connect the backend to it in Label Studio", 404)


@freesel_routes.route("/status", methods=["GET"])
@_with_errors
def status_view(project_id: int) -> Any:
    unknown = _unknown_project(project_id)
    return unknown if unknown is not None else jsonify(admin.status(_services(), project_id))


# The report inlines everything: a browser showing it may load nothing from anywhere.
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
REPORT_RETRY_S = 5


@freesel_routes.route("/report", methods=["GET"])
@_with_errors
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
        return Response(answer, mimetype="text/html", headers={"Content-Security-Policy": REPORT_CSP})
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


@freesel_routes.route("/enable", methods=["POST"])
@_with_errors
def enable_view(project_id: int) -> Any:
    return jsonify({"settings": admin.enable(_services(), project_id).to_dict()})


@freesel_routes.route("/disable", methods=["POST"])
@_with_errors
def disable_view(project_id: int) -> Any:
    return jsonify({"settings": admin.disable(_services(), project_id).to_dict()})


@freesel_routes.route("/reselect", methods=["POST"])
@_with_errors
def reselect_view(project_id: int) -> Any:
    return jsonify({"selection_job": admin.reselect(_services(), project_id)}), 202


@freesel_routes.route("/settings", methods=["GET", "PUT", "PATCH"])
@_with_errors
def settings_view(project_id: int) -> Any:
    services = _services()
    if request.method == "GET":
        return jsonify(services.store.get_settings(project_id).to_dict())
    changes = _json_body()
    if request.method == "PUT":  # PUT = the whole settings object: unnamed fields go back to defaults
        changes = {**admin.ProjectSettings().to_dict(), **changes}
    return jsonify(admin.apply_settings(services, project_id, changes).to_dict())

