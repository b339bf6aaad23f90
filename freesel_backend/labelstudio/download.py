"""Downloading the files Label Studio tasks reference: SSRF-safe and capped.

``/data/...`` paths and Label Studio URLs go to Label Studio with the API's authorization; other
``http(s)`` URLs go to their host without it (also across redirects), and with
``allow_private_addresses=False`` never to a host that resolves to a loopback, private, link-local
or reserved address (server-side request forgery). Cloud storage URIs (``s3://`` ...) are resolved
through Label Studio. Every download is streamed with a size cap and an overall time limit.
"""

from __future__ import annotations

import base64
import ipaddress
import socket
import time
from typing import Any, Mapping, Optional
from urllib.parse import urljoin, urlsplit

import requests

from .client import LabelStudioClient, LabelStudioError, LabelStudioUnavailable

DEFAULT_MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi")
_MAX_REDIRECTS = 5


class LabelStudioDownloadError(LabelStudioError):
    """A task file could not be downloaded (refused scheme, too large, bad URI, ...)."""


def _non_public_address(host: str, port: int) -> Optional[str]:
    """The first loopback/private/link-local/reserved address ``host`` resolves to, else None."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return None  # the request itself reports the unknown host
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not address.is_global:
            return str(address)
    return None


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


class Downloader:
    """Downloads for the tasks of ``label_studio``'s projects. ``max_bytes`` caps a file,
    ``timeout`` (default: the client's) bounds a whole download. Safe to share between threads."""

    def __init__(
        self,
        label_studio: LabelStudioClient,
        *,
        max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        timeout: Optional[float] = None,
        allow_private_addresses: bool = True,
    ) -> None:
        self.label_studio = label_studio
        self.max_bytes = int(max_bytes)
        self.timeout = float(timeout if timeout is not None else label_studio.timeout)
        self.allow_private_addresses = bool(allow_private_addresses)
        # Third-party downloads get a session of their own: no Label Studio cookies, no auth.
        self._public_session = requests.Session()
        self._public_session.trust_env = False

    def close(self) -> None:
        self._public_session.close()

    def _is_label_studio_url(self, url: str) -> bool:
        return _origin(url) == _origin(self.label_studio.url)

    def resolve_url(self, uri: str, task_id: Optional[int] = None) -> tuple[str, bool]:
        """Map a task data value to ``(absolute URL, on Label Studio: send its authorization?)``."""
        uri = uri.strip()
        base = self.label_studio.url
        if uri.startswith("/") and not uri.startswith("//"):
            return urljoin(base + "/", uri.lstrip("/")), True
        scheme = urlsplit(uri).scheme.lower()
        if scheme in ("http", "https"):
            return uri, self._is_label_studio_url(uri)
        if scheme in CLOUD_SCHEMES:
            if task_id is None:
                raise LabelStudioDownloadError(
                    f"cannot download {scheme}:// URI without a task id (resolved via /tasks/<id>/resolve/)"
                )
            fileuri = base64.urlsafe_b64encode(uri.encode()).decode()
            return f"{base}/tasks/{int(task_id)}/resolve/?fileuri={fileuri}", True
        shown = scheme or uri[:20]
        raise LabelStudioDownloadError(f"refusing to download a {shown!r} URI: only /data/..., http(s) and cloud URIs")

    def download(self, uri: str, *, task_id: Optional[int] = None) -> bytes:
        """Download a file referenced by a task (``/data/upload/...``, ``/data/local-files/?d=...``,
        ``http(s)://...``, ``s3://``/``gs://``/``azure-blob://`` with ``task_id``).

        The Label Studio authorization goes only to the Label Studio host, never to third
        parties (also not across redirects). Streamed with ``max_bytes`` and an overall ``timeout``.
        """
        url, on_label_studio = self.resolve_url(uri, task_id)
        deadline = time.monotonic() + self.timeout
        for _hop in range(_MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            path = parts.path or "/"
            shown = path if on_label_studio else f"{parts.scheme}://{parts.hostname}{path}"
            timeout = max(0.5, min(self.timeout, deadline - time.monotonic()))
            if on_label_studio:
                resp = self.label_studio.get_file(url, timeout=timeout)
            else:
                self._check_public_destination(url, shown)
                try:
                    resp = self._public_session.get(url, timeout=timeout, allow_redirects=False, stream=True)
                except requests.RequestException as exc:
                    raise self.label_studio.transport_error("GET", shown, exc, server="the image host") from None
            try:
                if resp.is_redirect:
                    url = urljoin(url, resp.headers.get("Location", ""))
                    if urlsplit(url).scheme.lower() not in ("http", "https"):
                        raise LabelStudioDownloadError(
                            f"GET {shown}: redirect to a non-http(s) URL refused", method="GET", path=shown
                        )
                    on_label_studio = self._is_label_studio_url(url)
                    continue
                if resp.status_code != 200:
                    raise self.label_studio.http_error("GET", shown, resp)
                return self._read_capped(resp, shown, deadline)
            finally:
                resp.close()
        raise LabelStudioDownloadError(
            f"GET {uri[:100]}: too many redirects (more than {_MAX_REDIRECTS})", method="GET"
        )

    def _check_public_destination(self, url: str, shown: str) -> None:
        if self.allow_private_addresses:
            return
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        address = _non_public_address(parts.hostname or "", port)
        if address is not None:
            raise LabelStudioDownloadError(
                f"GET {shown}: refused, {parts.hostname} resolves to the non-public address {address} "
                "(set FREESEL_ALLOW_PRIVATE_DOWNLOADS=true to allow image hosts on private networks)",
                method="GET",
                path=shown,
            )

    def _read_capped(self, resp: requests.Response, shown: str, deadline: float) -> bytes:
        cap = self.max_bytes
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > cap:
            raise LabelStudioDownloadError(
                f"GET {shown}: file of {int(length)} bytes exceeds the {cap}-byte limit",
                method="GET",
                path=shown,
                status_code=resp.status_code,
            )
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in resp.iter_content(chunk_size=64 * 1024):
                size += len(chunk)
                if size > cap:
                    raise LabelStudioDownloadError(
                        f"GET {shown}: file exceeds the {cap}-byte limit",
                        method="GET",
                        path=shown,
                        status_code=resp.status_code,
                    )
                if time.monotonic() > deadline:
                    raise LabelStudioUnavailable(
                        f"GET {shown}: download took longer than {self.timeout:g} s", method="GET", path=shown
                    )
                chunks.append(chunk)
        except requests.RequestException as exc:
            raise self.label_studio.transport_error("GET", shown, exc) from None
        return b"".join(chunks)

    def task_file(self, task: Mapping[str, Any], key: Optional[str] = None) -> bytes:
        """Download the file of a task: ``task["data"][key]`` (default: the only/first string value
        that looks like a URL or path)."""
        data = task.get("data") or {}
        if key is None:
            candidates = [v for v in data.values() if isinstance(v, str) and (v.startswith("/") or "://" in v)]
            if not candidates:
                raise LabelStudioDownloadError(f"task {task.get('id')}: no file URL in its data")
            value = candidates[0]
        else:
            value = data.get(key)
            if not isinstance(value, str):
                raise LabelStudioDownloadError(f"task {task.get('id')}: data[{key!r}] is not a URL")
        task_id = task.get("id")
        return self.download(value, task_id=int(task_id) if task_id is not None else None)
