"""``python -m freesel_backend quickstart IMAGES_DIR``: a folder of images into a Label Studio
project connected to a running FreeSel backend, up to the first ranking.

Idempotent: the project is found by title, images already uploaded (by file name) are skipped,
the backend is connected once. Unreadable image files are listed and skipped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from ..engine import list_image_files
from ..labelstudio.client import LabelStudioClient, LabelStudioError
from ..labelstudio.local import load_credentials
from .backend_client import BackendClient

REPO_ROOT = Path(__file__).resolve().parents[2]
LABEL_CONFIGS = {
    "classification": REPO_ROOT / "label_config.xml",
    "detection": REPO_ROOT / "label_config_detection.xml",
}
BACKEND_TITLE = "FreeSel"
# Django's DATA_UPLOAD_MAX_NUMBER_FILES in Label Studio: more files in one request answer HTTP 500
MAX_FILES_PER_REQUEST = 100
# Label Studio stores an uploaded file as /data/upload/<project>/<8 hex>-<name>
_STORED_NAME = re.compile(r"^[0-9a-f]{8}-(.+)$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class QuickstartError(RuntimeError):
    """Something quickstart needs is missing or refused; the message says what to do."""


@dataclass(frozen=True)
class Target:
    """Where the images go: a Label Studio and the backend connected to it."""

    label_studio_url: str
    api_key: str
    backend_url: str
    basic_auth: tuple[str, str] | None = None
    # FreeSel settings of a newly connected project (the connect form's extra params)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def backend(self) -> BackendClient:
        """The backend's project routes, called with this Label Studio's token (or the basic auth)."""
        return BackendClient(self.backend_url, self.api_key, self.basic_auth)


@dataclass
class Scan:
    """A folder's images: ``readable`` maps an upload name to its file; ``unreadable`` lists the rest."""

    readable: dict[str, Path] = field(default_factory=dict)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)


def upload_name(path: Path, root: Path) -> str:
    """The name a file is uploaded under: its path below ``root`` in characters Label Studio keeps."""
    return _UNSAFE.sub("_", "__".join(path.relative_to(root).parts))


def scan_folder(root: Path) -> Scan:
    scan = Scan()
    for path in list_image_files(root):
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as error:  # noqa: BLE001 - PIL raises many kinds; each file is reported
            scan.unreadable.append((path, f"{type(error).__name__}: {error}" if str(error) else type(error).__name__))
        else:
            scan.readable[upload_name(path, root)] = path
    return scan


def uploaded_names(client: LabelStudioClient, project_id: int) -> set[str]:
    """The upload names of the project's images (Label Studio prefixes a stored file's name)."""
    names = set()
    for task in client.iter_tasks(project_id, page_size=500):
        stored = str(task.get("data", {}).get("image", "")).rsplit("/", 1)[-1]
        match = _STORED_NAME.match(stored)
        names.add(match.group(1) if match else stored)
    return names


def upload_missing(client: LabelStudioClient, project_id: int, scan: Scan, batch_size: int) -> int:
    """Upload the readable images the project does not hold yet, in batches; returns how many."""
    present = uploaded_names(client, project_id)
    missing = [name for name in scan.readable if name not in present]
    if present:
        print(f"{len(scan.readable) - len(missing)} images already in the project: skipped", file=sys.stderr)
    with tqdm(total=len(missing), unit="img", desc="upload", file=sys.stderr, dynamic_ncols=True) as bar:
        for start in range(0, len(missing), batch_size):
            batch = missing[start:start + batch_size]
            client.import_files(project_id, {name: scan.readable[name] for name in batch})
            bar.update(len(batch))
    return len(missing)


def backend_status(target: Target, project_id: int) -> dict[str, Any]:
    return dict(target.backend.call("GET", project_id, "status"))


def ranked_since(status: dict[str, Any], expected_tasks: int, since: float) -> bool:
    """Every task has its patterns (or failed), a ranking finished after ``since`` and, when it
    ranked any task, Label Studio's queue serves it: switched and its write-out done (between the
    ranking and its write-out job no job may be waiting yet)."""
    idle = all(count == 0 for groups in status["jobs"].values() for count in groups.values())
    last = status["last_selection_at"]
    served = status["ranked"] == 0 or (
        status["live"] is not None and (status["writeout"] or {}).get("state") == "done"
    )
    return bool(
        idle and served and last and status["tasks"] >= expected_tasks and status["patterns_pending"] == 0
        and datetime.datetime.fromisoformat(last).timestamp() >= since
    )


def wait_for_ranking(
    target: Target, project_id: int, expected_tasks: int, since: float, timeout_s: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    with tqdm(total=expected_tasks, unit="task", desc="FreeSel patterns", file=sys.stderr, dynamic_ncols=True) as bar:
        while True:
            status = backend_status(target, project_id)
            bar.total = max(expected_tasks, status["tasks"])
            bar.update(status["patterns_done"] + status["failed"] - bar.n)
            if ranked_since(status, expected_tasks, since):
                return status
            if time.monotonic() > deadline:
                raise QuickstartError(f"no ranking of project {project_id} within {timeout_s:.0f} s: "
                                      f"python -m freesel_backend project {project_id} status says why")
            time.sleep(1.0)


def quickstart(target: Target, images: Path, title: str, label_config: str, *, batch_size: int = MAX_FILES_PER_REQUEST,
               wait_s: float = 3600.0) -> dict[str, Any]:
    """Project ``title`` with the images of ``images``, connected to the backend and ranked."""
    scan = scan_folder(images)
    for path, error in scan.unreadable:
        print(f"skipped (unreadable): {path}: {error}", file=sys.stderr)
    if not scan.readable:
        raise QuickstartError(f"no readable image in {images}")
    with LabelStudioClient(target.label_studio_url, target.api_key) as client:
        project = client.find_project(title) or client.create_project(title, label_config)
        since = time.time()
        uploaded = upload_missing(client, project["id"], scan, batch_size)
        connected = any(
            b.get("url", "").rstrip("/") == target.backend_url for b in client.list_ml_backends(project["id"])
        )
        if not connected:
            client.connect_ml_backend(project["id"], target.backend_url, BACKEND_TITLE,
                                      basic_auth=target.basic_auth, extra_params=target.settings)
        expected = len(uploaded_names(client, project["id"]))
    status = wait_for_ranking(target, project["id"], expected, since if uploaded or not connected else 0.0, wait_s)
    return {"project": project, "uploaded": uploaded, "unreadable": scan.unreadable, "status": status,
            "report_link": target.backend.report_link(project["id"])}


def describe(result: dict[str, Any], target: Target) -> str:
    project, status = result["project"], result["status"]
    return (
        f"FreeSel ranked {status['ranked']} tasks of project '{project['title']}' ({status['picks']} picks, "
        f"{status['failed']} failed, {len(result['unreadable'])} unreadable files skipped).\n"
        f"Open {target.label_studio_url}, project '{project['title']}' "
        f"({target.label_studio_url}/projects/{project['id']}/data): "
        f"Label All Tasks serves FreeSel's picks first.\n"
        f"Selection report (this link opens it for a day): {result['report_link']}"
    )


def target_from(args: argparse.Namespace) -> Target:
    """Label Studio from the options, else LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY, else the local
    Label Studio of scripts/run.sh (credentials under MODEL_DIR)."""
    url = args.label_studio_url or os.environ.get("LABEL_STUDIO_URL") or os.environ.get("LABEL_STUDIO_HOST") or ""
    key = args.api_key or os.environ.get("LABEL_STUDIO_API_KEY") or ""
    if not (url and key):
        local = load_credentials(Path(os.environ.get("MODEL_DIR") or "model_dir"))
        if local is None or not local.token:
            raise QuickstartError(
                "no Label Studio given: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (or --label-studio-url "
                "and --api-key), or start the local one with scripts/run.sh"
            )
        url, key = url or local.url, key or local.token
    backend = args.backend_url or os.environ.get("FREESEL_PUBLIC_URL") or "http://localhost:9090"
    user, password = os.environ.get("BASIC_AUTH_USER", ""), os.environ.get("BASIC_AUTH_PASS", "")
    settings = json.loads(args.settings) if args.settings else {}
    if not isinstance(settings, dict):
        raise ValueError(f"--settings must be a JSON object, got {args.settings!r}")
    return Target(url.rstrip("/"), key, backend.rstrip("/"), (user, password) if user else None, settings)


def add_quickstart_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "quickstart",
        help="a folder of images into a Label Studio project ranked by the running backend",
        description="Create (or reuse) a Label Studio project, upload the images it lacks (batches, progress bar), "
        "connect the running FreeSel backend and wait for its first ranking. Label Studio: "
        "--label-studio-url/--api-key, "
        "else LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY, else the local one of scripts/run.sh.",
    )
    parser.add_argument("images", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--task", choices=sorted(LABEL_CONFIGS), default="classification",
                        help="label config kind when --label-config is not given (classification)")
    parser.add_argument("--label-config", type=Path, help="Label Studio labeling config XML for a new project")
    parser.add_argument("--title", help="project title (default: the folder's name)")
    parser.add_argument("--label-studio-url")
    parser.add_argument("--api-key", help="Personal Access Token or legacy token")
    parser.add_argument("--backend-url", help="the backend as Label Studio reaches it (FREESEL_PUBLIC_URL or http://localhost:9090)")
    parser.add_argument(
        "--settings", help="FreeSel settings when the backend is connected, e.g. '{\"budget\": 50}' (README)"
    )
    parser.add_argument("--batch-size", type=int, default=MAX_FILES_PER_REQUEST,
                        help=f"images per upload request ({MAX_FILES_PER_REQUEST}, Label Studio's most)")
    parser.add_argument("--wait", type=float, default=3600, help="seconds to wait for the first ranking (3600)")
    parser.set_defaults(run=run_quickstart)


def run_quickstart(args: argparse.Namespace) -> int:
    if not args.images.is_dir():
        raise FileNotFoundError(f"no such folder: {args.images}")
    if not 1 <= args.batch_size <= MAX_FILES_PER_REQUEST:
        raise ValueError(
            f"--batch-size must be 1..{MAX_FILES_PER_REQUEST} (Label Studio refuses more files per request), got "
            f"{args.batch_size}"
        )
    config_file = args.label_config or LABEL_CONFIGS[args.task]
    target = target_from(args)
    try:
        result = quickstart(target, args.images, args.title or args.images.resolve().name,
                            config_file.read_text(encoding="utf-8"), batch_size=args.batch_size, wait_s=args.wait)
    except (QuickstartError, LabelStudioError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(describe(result, target))
    return 0

