"""A PostgreSQL database of its own for a Label Studio under test or benchmark.

Label Studio runs on PostgreSQL with ``DJANGO_DB=default`` and its ``POSTGRE_*`` variables.
``postgres_database`` creates a new database on a server with trust auth for user ``postgres``
(``FREESEL_TEST_POSTGRES_HOST``/``_PORT``, default 127.0.0.1:5432) and drops it afterwards. Where
no server answers, ``ensure_postgresql`` installs Debian's ``postgresql`` package and starts its
cluster (needs root)::

    python -m harness.postgresql   # make sure a server answers (scripts/test.sh runs this)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

DEFAULT_HOST = os.environ.get("FREESEL_TEST_POSTGRES_HOST", "127.0.0.1")
DEFAULT_PORT = int(os.environ.get("FREESEL_TEST_POSTGRES_PORT", "5432"))


def postgres_answers(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> bool:
    if shutil.which("pg_isready") is None:
        return False
    return subprocess.run(["pg_isready", "-h", host, "-p", str(port)], capture_output=True).returncode == 0


def install_and_start_postgresql() -> None:
    """Debian's postgresql package and its default cluster, with trust auth on loopback."""
    if shutil.which("pg_ctlcluster") is None or not list(Path("/etc/postgresql").glob("*/main")):
        apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=apt_env)
        subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], check=True, env=apt_env)
    cluster = sorted(Path("/etc/postgresql").glob("*/main"))[-1]
    hba = cluster / "pg_hba.conf"
    hba.write_text(
        "local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n" + hba.read_text()
    )
    subprocess.run(["pg_ctlcluster", cluster.parent.name, "main", "start"], check=False)
    subprocess.run(["pg_ctlcluster", cluster.parent.name, "main", "reload"], check=True)


def ensure_postgresql(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """A server answers at ``host:port``, installed and started here if none did."""
    if postgres_answers(host, port):
        return
    install_and_start_postgresql()
    if not postgres_answers(host, port):
        raise RuntimeError(f"PostgreSQL does not answer at {host}:{port} after installing and starting it")


def psql(host: str, port: int, statement: str) -> None:
    subprocess.run(
        ["psql", "-h", host, "-p", str(port), "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-qc", statement], check=True
    )


@contextmanager
def postgres_database(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> Iterator[dict[str, str]]:
    """A new database (yields Label Studio's environment variables for it), dropped afterwards."""
    ensure_postgresql(host, port)
    name = f"freesel_{uuid.uuid4().hex[:10]}"
    psql(host, port, f'CREATE DATABASE "{name}"')
    try:
        yield {
            "DJANGO_DB": "default", "POSTGRE_NAME": name, "POSTGRE_USER": "postgres", "POSTGRE_PASSWORD": "",
            "POSTGRE_HOST": host, "POSTGRE_PORT": str(port),
        }
    finally:
        psql(host, port, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    ensure_postgresql()
    print(f"PostgreSQL answers at {DEFAULT_HOST}:{DEFAULT_PORT}", file=sys.stderr)
