"""Predictions in Label Studio's API: bulk imports, the project's listing, one prediction changed
or deleted."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from .connection import Connection, JSONDict, LabelStudioNotFound


class PredictionsApi(Connection):
    """Predictions: imported in bulk, listed, changed in place, deleted."""

    def import_predictions(
        self, project_id: int, predictions: Sequence[Mapping[str, Any]], *, chunk_size: int = 500,
        timeout: Optional[float] = None,
    ) -> int:
        """Bulk-create predictions (``{"task", "result", "score", "model_version", ...}``).

        Sent in chunks; returns the number created. Importing again adds rows (it never replaces
        one): change a prediction with :meth:`update_prediction`.
        """
        created = 0
        path = f"/api/projects/{int(project_id)}/import/predictions"
        for start in range(0, len(predictions), max(1, chunk_size)):
            chunk = [dict(p) for p in predictions[start : start + chunk_size]]
            body = self.call("POST", path, json_body=chunk, timeout=timeout)
            if isinstance(body, dict) and isinstance(body.get("created"), int):
                created += body["created"]
            else:
                created += len(chunk)
        return created

    def list_predictions(self, project_id: int) -> list[JSONDict]:
        """Every prediction of the project (all model versions; one request, not paginated)."""
        body = self.call("GET", "/api/predictions/", params={"project": int(project_id)})
        return list(body if isinstance(body, list) else (body or {}).get("results", []))

    def update_prediction(self, prediction_id: int, **fields: Any) -> JSONDict:
        """Change one prediction in place, e.g. ``score=0.25``."""
        return self.call("PATCH", f"/api/predictions/{int(prediction_id)}/", json_body=fields)

    def delete_prediction(self, prediction_id: int) -> None:
        """Delete one prediction; one that is already gone is not an error."""
        try:
            self.request("DELETE", f"/api/predictions/{int(prediction_id)}/")
        except LabelStudioNotFound:
            pass
