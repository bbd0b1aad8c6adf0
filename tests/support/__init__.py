"""Helpers shared by the tests (and the benchmarks in bench/), importable as `support.<module>`:

- `stubs`: the orchestrator stub as a real process (`Stubs`, `StubProcess`) and its fixtures;
- `procs`: worker processes, a recording proxy, a file server, and the `workers` fixture;
- `fakes`: in-process fakes of the GPU child and of the orchestrator (httpx.MockTransport);
- `slots`: a worker whose uploads take time (`delayed_upload_worker.py`) and a proxy holding back statuses;
- `databases`, `postgres`, `legacy_db`: the stub's databases in the tests (SQLite, a real PostgreSQL server,
  SQLite files as stubs made them before the schema was Alembic's); `balancer`: a TCP load balancer;
- `http_servers`, `b2`, `video`, `fuzz`: a threaded loopback server, b2sdk's simulator, reading MP4s, fuzzing.
- `fixtures/`: stand-in executables for the entrypoint's tests.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
