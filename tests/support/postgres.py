"""A real PostgreSQL server for the tests and benches, from Debian's packages (`apt-get install postgresql`):
`initdb` into a temporary folder, `pg_ctl start` on a free loopback port, stopped by its PID.

The server refuses to run as root, so as root (CI) it runs as the `postgres` user that the package creates.
Clients log in over TCP with a password (scram-sha-256), as a deployment would; each test module or bench run
takes a database of its own (`create_database`).

    server = PostgresServer.start()
    url = server.url(server.create_database("stub_x"))   # postgresql://stub:…@127.0.0.1:PORT/stub_x
    ...
    server.stop()
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from support.http_servers import free_port

USER = "stub"
RUN_AS = "postgres"  # as root: the package's system user


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries here (apt-get install postgresql)."""


def bin_dir() -> Path:
    """The newest installed server's bin folder (PG_BIN overrides)."""
    if found := os.environ.get("PG_BIN"):
        return Path(found)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return Path(candidates[-1]).parent
    if initdb := shutil.which("initdb"):
        return Path(initdb).parent
    raise PostgresUnavailable("no initdb found: apt-get install postgresql (or set PG_BIN)")


def _demote() -> Callable[[], None] | None:
    """As root, the child becomes the `postgres` user; otherwise it runs as we do."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(RUN_AS)

    def become() -> None:
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)

    return become


@dataclass
class PostgresServer:
    folder: Path
    port: int
    password: str
    bin: Path

    @classmethod
    def start(cls, *, durable: bool = False, max_connections: int = 300) -> PostgresServer:
        """initdb and start in a new folder of the system's temporary directory (one the `postgres` user can
        reach: pytest's own are private to root); `durable`: fsync on (the soak run), else off (tests: a crash
        of the machine is not what they test, and fsync costs seconds on a busy disk)."""
        folder = Path(tempfile.mkdtemp(prefix="stub-pg-"))
        server = cls(folder, free_port(), secrets.token_urlsafe(16), bin_dir())
        pwfile = folder / "pw"
        pwfile.write_text(server.password + "\n")
        if os.geteuid() == 0:
            entry = pwd.getpwnam(RUN_AS)
            for path in (folder, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        server._run(
            "initdb",
            "-D",
            str(server.data),
            "-U",
            USER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={pwfile}",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        pwfile.unlink()
        options = [
            f"-p {server.port}",
            f"-k {folder}",
            "-c listen_addresses=127.0.0.1",
            f"-c max_connections={max_connections}",
            "-c shared_buffers=32MB",
        ]
        if not durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        server._run("pg_ctl", "-D", str(server.data), "-l", str(server.log), "-o", " ".join(options), "-w", "start")
        return server

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [str(self.bin / tool), *args], preexec_fn=_demote(), capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        return f"postgresql://{USER}:{password or self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def pid(self) -> int | None:
        pidfile = self.data / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(pidfile.read_text().splitlines()[0])
        return None

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster, by its PID), then the folder goes."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    os.kill(pid, 0)
                    time.sleep(0.05)
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def running(*, durable: bool = False) -> Iterator[PostgresServer]:
    server = PostgresServer.start(durable=durable)
    try:
        yield server
    finally:
        server.stop()
