"""A real PostgreSQL server for the tests: Debian's ``postgresql`` package (``make database``
installs it), started on a loopback port in a temporary data folder, one database per test.

PostgreSQL refuses to run as root; as root the server runs as the package's ``postgres``
user, in a folder that user owns.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.support import free_port

USER = "llmlb"


def postgres_bin() -> Path | None:
    """The newest installed server's bin folder (Debian keeps one per major version)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _major(path: str) -> int:
    version = path.split("/")[4]
    return int(version) if version.isdigit() else 0


class PostgresServer:
    """``host``/``namespace``: where it listens (a lab host's address, from inside its
    network namespace: tests/netlab.py), trusting that address's /16; default loopback."""

    def __init__(self, host: str = "127.0.0.1", namespace: str | None = None) -> None:
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise RuntimeError(
                "PostgreSQL is not installed: run `make database` (Debian's postgresql package)"
            )
        self._bin = bin_dir
        self._root = Path(tempfile.mkdtemp(prefix="llmlb-pg-"))
        self._data = self._root / "data"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self._root, "postgres", "postgres")
        self.host, self._namespace = host, namespace
        self.port = free_port() if namespace is None else 5432  # (a fresh host's is free)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_root else []
        inside = ["ip", "netns", "exec", self._namespace] if self._namespace else []
        return subprocess.run(
            [*inside, *prefix, *args], capture_output=True, text=True, timeout=120, check=True
        )

    def start(self) -> PostgresServer:
        self._run(str(self._bin / "initdb"), "-D", str(self._data), "-U", USER,
                  "--auth=trust", "--encoding=UTF8", "--no-instructions")  # fmt: skip
        if self.host != "127.0.0.1":  # (initdb trusts loopback only)
            network = ".".join(self.host.split(".")[:2]) + ".0.0/16"
            with (self._data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {network} trust\n")
        # Durability is not under test here: no fsync makes each test's database cheap.
        options = (
            f"-c listen_addresses={self.host} -c port={self.port} -c unix_socket_directories=''"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            " -c max_connections=300"
        )
        self._run(str(self._bin / "pg_ctl"), "-D", str(self._data), "-o", options,
                  "-l", str(self._root / "server.log"), "-w", "-t", "60", "start")  # fmt: skip
        self._options = options
        return self

    def pause(self) -> None:
        """Stop the server (its clients see connections refused) until ``resume``."""
        self._run(str(self._bin / "pg_ctl"), "-D", str(self._data), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        self._run(str(self._bin / "pg_ctl"), "-D", str(self._data), "-o", self._options,
                  "-l", str(self._root / "server.log"), "-w", "-t", "60", "start")  # fmt: skip

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://{USER}@{self.host}:{self.port}/{database}"

    def new_database(self) -> str:
        """An empty database of its own; its SQLAlchemy URL."""
        name = "t" + uuid.uuid4().hex[:16]
        self._psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def _psql(self, sql: str, database: str = "postgres") -> str:
        return subprocess.run(
            [str(self._bin / "psql"), "-h", self.host, "-p", str(self.port), "-U", USER,
             "-d", database, "-v", "ON_ERROR_STOP=1", "-q", "-A", "-t", "-c", sql],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip

    def query(self, url: str, sql: str) -> list[list[str]]:
        """The rows ``sql`` reads in the database of ``url`` (as ``new_database`` made it),
        each a list of its columns as psql prints them."""
        lines = self._psql(sql, database=url.rsplit("/", 1)[1]).splitlines()
        return [line.split("|") for line in lines if line]

    def stop(self) -> None:
        try:  # a paused server is stopped already
            self._run(str(self._bin / "pg_ctl"), "-D", str(self._data), "-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass
        finally:
            shutil.rmtree(self._root, ignore_errors=True)
