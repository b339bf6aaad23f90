"""The web service: label-studio-ml's app (``/health``, ...) with FreeSel's ``/setup``,
``/predict`` and ``/webhook`` and the admin routes under ``/freesel/projects/<id>/``.

Gunicorn: ``gunicorn 'freesel_backend.wsgi:create_app()'``.

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

from . import admin
from .config import Settings, SettingsError
from .label_studio import LabelStudioError
from .model import FreeSelModel, LabelConfigError, project_id_of

log = logging.getLogger(__name__)

freesel_routes = Blueprint("freesel", __name__, url_prefix="/freesel/projects/<int:project_id>")


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    if not settings.redis_url:
        raise SettingsError("REDIS_URL is not set (python -m freesel_backend serve starts an embedded Redis)")
    app = init_app(FreeSelModel, model_dir=str(settings.model_dir))
    app.config["FREESEL_BACKEND"] = admin.Backend(settings, redis.Redis.from_url(settings.redis_url))
    app.view_functions["_setup"] = _with_errors(setup_view)
    app.view_functions["_predict"] = _with_errors(predict_view)
    app.view_functions["webhook"] = _with_errors(webhook_view)
    if "freesel" not in app.blueprints:
        app.register_blueprint(freesel_routes)
        app.before_request(_check_basic_auth)
    return app


def _backend() -> admin.Backend:
    return current_app.config["FREESEL_BACKEND"]


def _model(project: Any, label_config: str | None = None) -> FreeSelModel:
    return FreeSelModel(label_config=label_config, project_id=project_id_of(project), backend=_backend())


def _check_basic_auth() -> Response | None:
    expected = _backend().settings.basic_auth
    if expected is None:
        return None
    given = request.authorization
    if given and hmac.compare_digest(given.username or "", expected[0]) and hmac.compare_digest(given.password or "", expected[1]):
        return None
    response = jsonify({"error": "authentication required"})
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Basic realm="FreeSel"'
    return response


def _with_errors(view: Callable[..., Any]) -> Callable[..., Any]:
    """Clear JSON errors: 400 for bad input, 502 when Label Studio fails."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return view(*args, **kwargs)
        except (SettingsError, LabelConfigError, ValueError) as error:
            return jsonify({"error": str(error)}), 400
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


def predict_view() -> Any:
    body = _json_body()
    model = _model(body.get("project"), body.get("label_config"))
    return jsonify({"results": model.predict(body.get("tasks") or []), "model_version": model.model_version()})


def webhook_view() -> Any:
    body = _json_body()
    event = str(body.get("action") or "")
    project = body.get("project")
    if project is None:
        return jsonify({"ignored": f"{event}: no project in the payload"}), 200
    return jsonify(_model(project).process_event(event, body)), 201


@freesel_routes.route("/status", methods=["GET"])
@_with_errors
def status_view(project_id: int) -> Any:
    return jsonify(admin.status(_backend(), project_id))


@freesel_routes.route("/enable", methods=["POST"])
@_with_errors
def enable_view(project_id: int) -> Any:
    return jsonify({"settings": admin.enable(_backend(), project_id).to_dict()})


@freesel_routes.route("/disable", methods=["POST"])
@_with_errors
def disable_view(project_id: int) -> Any:
    return jsonify({"settings": admin.disable(_backend(), project_id).to_dict()})


@freesel_routes.route("/reselect", methods=["POST"])
@_with_errors
def reselect_view(project_id: int) -> Any:
    return jsonify({"selection_job": admin.reselect(_backend(), project_id)}), 202


@freesel_routes.route("/settings", methods=["GET", "PUT", "PATCH"])
@_with_errors
def settings_view(project_id: int) -> Any:
    backend = _backend()
    if request.method == "GET":
        return jsonify(backend.store.get_settings(project_id).to_dict())
    changes = _json_body()
    if request.method == "PUT":  # PUT = the whole settings object: unnamed fields go back to defaults
        changes = {**admin.ProjectSettings().to_dict(), **changes}
    return jsonify(admin.apply_settings(backend, project_id, changes).to_dict())

