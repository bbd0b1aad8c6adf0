"""run_fastwan_worker.sh, the container entrypoint: environment checks, supervision, signals, exec.

The supervision cases use stand-ins (tests/support/fixtures/): `fake_python.sh` as PYTHON in place of
`python -m worker_app_fastwan serve`, and `fake_salad_worker.sh` as SaladCloud's job-queue binary. One test
runs the real app (tiny backend). The linters run here too: shellcheck on the script, hadolint on the
Dockerfile (skipped only when a binary is missing).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import REPO

from worker_app_fastwan.core.settings import Settings

SCRIPT = REPO / "run_fastwan_worker.sh"
FIXTURES = REPO / "tests" / "support" / "fixtures"
VENV_BIN = Path(sys.executable).parent
SALAD_NAME = "salad-http-job-queue-worker"


@pytest.fixture
def fake(tmp_path) -> Path:
    """A folder for the stand-ins' marker files, with the Salad stand-in in bin/ under its real name."""
    (tmp_path / "bin").mkdir()
    salad = tmp_path / "bin" / SALAD_NAME
    shutil.copy(FIXTURES / "fake_salad_worker.sh", salad)
    python = tmp_path / "fake_python.sh"
    shutil.copy(FIXTURES / "fake_python.sh", python)
    for stand_in in (salad, python):
        stand_in.chmod(0o755)
    return tmp_path


def _env(fake: Path, *, salad_on_path: bool = True, **extra: str) -> dict[str, str]:
    """No worker setting leaks in from the runner's environment; the stand-ins unless told otherwise."""
    env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    path = os.environ.get("PATH", "/usr/bin:/bin")
    env.update(
        PATH=f"{fake / 'bin'}:{path}" if salad_on_path else path,
        FAKE_DIR=str(fake),
        FAKE_REAL_PYTHON=sys.executable,
        PYTHON=str(fake / "fake_python.sh"),
        DRAIN_TIMEOUT_S="1",
        STOP_MARGIN_S="2",
    )
    env.update(extra)
    return env


class Script:
    """The entrypoint as a process of its own session, so that cleanup can end everything it started."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [str(SCRIPT)],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def finish(self, timeout: float = 15) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def kill_all(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=5)


@pytest.fixture
def run_script(fake) -> Iterator:
    started: list[Script] = []

    def start(env: dict[str, str]) -> Script:
        script = Script(env, fake)
        started.append(script)
        return script

    yield start
    for script in started:
        script.kill_all()


def _wait_for(path: Path, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise AssertionError(f"{path.name} never appeared")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def _gone_soon(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


# --- the environment check ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (
            {"WORKER_MODE": "turbo", "PORT": "80a", "PIPELINE_BACKEND": "onnx"},
            ["WORKER_MODE", "PORT", "PIPELINE_BACKEND"],
        ),
        (
            {"PORT": "70000", "STORAGE_BACKEND": "gcs", "DRAIN_TIMEOUT_S": "soon"},
            ["STORAGE_BACKEND", "PORT", "DRAIN_TIMEOUT_S"],  # the storage variables are read first (a shared class)
        ),
        ({"WORKER_MODE": "buffer"}, ["ORCHESTRATOR_BASE_URL", "INTERNAL_API_KEY"]),
        ({"B2_KEY_ID": "key-id-value-1234", "B2_APP_KEY": "app-key-secret-5678"}, ["B2_BUCKET_NAME"]),
        ({"STORAGE_BACKEND": "b2"}, ["B2_KEY_ID", "B2_APP_KEY", "B2_BUCKET_NAME"]),
        ({"ORCHESTRATOR_BASE_URL": "ftp://user:hunter2@orch.example"}, ["ORCHESTRATOR_BASE_URL", "INTERNAL_API_KEY"]),
        (
            {
                "WORKER_MODE": "buffer",
                "ORCHESTRATOR_BASE_URL": "http://127.0.0.1:9",
                "INTERNAL_API_KEY": "k",
                "BUFFER_WORKER_ID": "vast 1/2",
            },
            ["BUFFER_WORKER_ID"],
        ),
    ],
)
def test_bad_environment_exits_2_naming_each_variable(fake, run_script, extra, named):
    code, out, err = run_script(_env(fake, **extra)).finish()
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == len(named), err
    for line, name in zip(lines, named, strict=True):
        assert f": {name}: " in line, line
    for secret in ("key-id-value-1234", "app-key-secret-5678", "hunter2"):
        assert secret not in err + out
    assert not (fake / "app.args").exists() and not (fake / "salad.pid").exists(), "nothing may start"


# --- queue mode supervision, with stand-ins -------------------------------------------------------------


def test_sigterm_reaches_both_and_script_exits_0(fake, run_script):
    script = run_script(_env(fake))
    app_pid, salad_pid = int(_wait_for(fake / "app.pid")), int(_wait_for(fake / "salad.pid"))
    assert (fake / "app.args").read_text().split(maxsplit=1)[1].strip() == "-m worker_app_fastwan serve"
    script.proc.send_signal(signal.SIGTERM)
    code, _, err = script.finish()
    assert code == 0, err
    assert (fake / "app.term").read_text().strip() == "got TERM"
    assert (fake / "salad.term").read_text().strip() == "got TERM"
    assert _gone_soon(app_pid) and _gone_soon(salad_pid)


def test_sigint_is_forwarded_as_term(fake, run_script):
    script = run_script(_env(fake))
    _wait_for(fake / "app.pid"), _wait_for(fake / "salad.pid")
    script.proc.send_signal(signal.SIGINT)
    code, _, err = script.finish()
    assert code == 0, err
    assert (fake / "app.term").exists() and (fake / "salad.term").exists()


@pytest.mark.parametrize(("salad_code", "script_code"), [("0", 1), ("3", 3)])
def test_salad_binary_dying_stops_the_app(fake, run_script, salad_code, script_code):
    script = run_script(_env(fake, FAKE_SALAD_EXIT_AFTER_S="1", FAKE_SALAD_EXIT_CODE=salad_code))
    app_pid = int(_wait_for(fake / "app.pid"))
    code, _, err = script.finish()
    assert code == script_code, err
    assert SALAD_NAME in err and f"exited with code {salad_code}" in err
    assert (fake / "app.term").exists(), "the app is told to stop"
    assert _gone_soon(app_pid)


@pytest.mark.parametrize(("app_code", "script_code"), [("5", 5), ("0", 1)])
def test_app_dying_stops_the_salad_binary(fake, run_script, app_code, script_code):
    script = run_script(_env(fake, FAKE_APP_EXIT_AFTER_S="1", FAKE_APP_EXIT_CODE=app_code))
    salad_pid = int(_wait_for(fake / "salad.pid"))
    code, _, err = script.finish()
    assert code == script_code, err
    assert (fake / "salad.term").exists()
    assert _gone_soon(salad_pid)


def test_app_failing_its_drain_makes_the_script_fail(fake, run_script):
    script = run_script(_env(fake, FAKE_APP_TERM_CODE="3"))
    _wait_for(fake / "app.pid"), _wait_for(fake / "salad.pid")
    script.proc.send_signal(signal.SIGTERM)
    code, _, _ = script.finish()
    assert code == 3


def test_app_ignoring_term_is_killed_after_the_grace(fake, run_script):
    # grace = DRAIN_TIMEOUT_S (0) + 1 + STOP_MARGIN_S (1) = 2 s
    script = run_script(_env(fake, FAKE_APP_IGNORE_TERM="1", DRAIN_TIMEOUT_S="0", STOP_MARGIN_S="1"))
    app_pid = int(_wait_for(fake / "app.pid"))
    _wait_for(fake / "salad.pid")
    start = time.monotonic()
    script.proc.send_signal(signal.SIGTERM)
    code, _, err = script.finish()
    took = time.monotonic() - start
    assert code == 128 + signal.SIGKILL, err
    assert "KILL" in err and 1.5 < took < 8
    assert (fake / "app.term").exists() and _gone_soon(app_pid)


def test_without_salad_binary_the_app_runs_alone(fake, run_script):
    script = run_script(_env(fake, salad_on_path=False, SALAD_QUEUE_WORKER_BIN="no-such-salad-binary"))
    _wait_for(fake / "app.pid")
    time.sleep(0.3)
    assert not (fake / "salad.pid").exists()
    script.proc.send_signal(signal.SIGTERM)
    code, _, err = script.finish()
    assert code == 0 and "no no-such-salad-binary on PATH" in err


def test_salad_binary_can_be_named_by_path(fake, run_script):
    env = _env(fake, salad_on_path=False, SALAD_QUEUE_WORKER_BIN=str(fake / "bin" / SALAD_NAME))
    script = run_script(env)
    _wait_for(fake / "salad.pid")
    script.proc.send_signal(signal.SIGTERM)
    assert script.finish()[0] == 0


# --- buffer mode: exec ----------------------------------------------------------------------------------


def test_buffer_mode_execs_the_buffer_command(fake, run_script):
    env = _env(
        fake,
        WORKER_MODE="buffer",
        ORCHESTRATOR_BASE_URL="http://127.0.0.1:9",
        INTERNAL_API_KEY="k",
        B2_KEY_ID="a",
        B2_APP_KEY="b",
        B2_BUCKET_NAME="c",
    )
    script = run_script(env)
    code, out, err = script.finish()
    assert code == 0, err
    pid, args = out.strip().split(maxsplit=1)
    assert int(pid) == script.proc.pid, "exec: the buffer worker replaces the script (same pid)"
    assert args == "-m worker_app_fastwan buffer"
    assert not (fake / "salad.pid").exists()


def test_baked_model_becomes_model_path_unless_one_is_set(fake, run_script):
    baked = fake / "baked"
    baked.mkdir()
    (baked / "model_index.json").write_text("{}")
    env = _env(
        fake,
        WORKER_MODE="buffer",
        ORCHESTRATOR_BASE_URL="http://127.0.0.1:9",
        INTERNAL_API_KEY="k",
        BAKED_MODEL_PATH=str(baked),
    )
    code, _, err = run_script(env).finish()
    assert code == 0 and (fake / "app.model_path").read_text().strip() == str(baked)
    assert "baked into the image" in err
    own = fake / "own"
    own.mkdir()
    code, _, _ = run_script({**env, "MODEL_PATH": str(own)}).finish()
    assert code == 0 and (fake / "app.model_path").read_text().strip() == str(own)
    code, _, _ = run_script({**env, "BAKED_MODEL_PATH": str(fake / "nothing-baked")}).finish()
    assert code == 0 and (fake / "app.model_path").read_text().strip() == ""


# --- docker-compose.yml -----------------------------------------------------------------------------------

SCRIPT_VARIABLES = {"PYTHON", "SALAD_QUEUE_WORKER_BIN", "STOP_MARGIN_S", "BAKED_MODEL_PATH"}


def _compose() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))


def test_compose_services_use_real_settings():
    from orchestrator_stub.settings import StubSettings

    services = _compose()["services"]
    assert {"stub", "worker", "stub-queue", "queue-worker"} <= set(services)
    for name, service in services.items():
        known = set(StubSettings.model_fields) if "stub" in name else set(Settings.model_fields) | SCRIPT_VARIABLES
        unknown = set(service.get("environment", {})) - known
        assert not unknown, f"{name}: {sorted(unknown)} are not settings"


def test_compose_wiring():
    compose = _compose()
    services = compose["services"]
    # A buffer worker takes every GPU of the box (one slot each); a queue worker, one GPU (issue 13).
    for name, count in (("worker", "all"), ("queue-worker", 1)):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [
            {"driver": "nvidia", "count": count, "capabilities": ["gpu", "compute", "utility", "video"]}
        ], name
        assert "models:/models/hf" in services[name]["volumes"]
        assert services[name]["environment"]["STORAGE_BACKEND"].endswith(":-local}")
    worker, queue = services["worker"]["environment"], services["queue-worker"]["environment"]
    assert worker["WORKER_MODE"] == "buffer" and worker["ORCHESTRATOR_BASE_URL"] == "http://stub:8080"
    assert worker["GPU_DEVICES"] == "${GPU_DEVICES:-auto}" and "GPU_DEVICES" not in queue
    assert services["worker"]["ports"] == [f"127.0.0.1:{worker['METRICS_PORT']}:{worker['METRICS_PORT']}"]
    assert queue["WORKER_MODE"] == "queue" and queue["PORT"] == "8000"
    stub = services["stub"]
    assert "entrypoint" not in stub, "the stub image's own entrypoint (tini + python -m orchestrator_stub)"
    assert stub["environment"]["STUB_PORT"] == "8080" and stub["environment"]["STUB_DB"].endswith(".sqlite3")
    assert any(v.startswith("stub-data:") for v in stub["volumes"])
    assert "${INTERNAL_API_KEY" in stub["environment"]["INTERNAL_API_KEY"]
    dispatch = services["stub-queue"]["command"]
    assert dispatch == ["--dispatch-to", "http://queue-worker:8000/generate"]
    assert services["stub-queue"]["profiles"] == ["queue"] and services["queue-worker"]["profiles"] == ["queue"]
    assert "profiles" not in services["worker"] and "profiles" not in services["stub"]
    assert set(compose["volumes"]) >= {"models", "worker-state", "stub-data"}


def test_compose_gives_the_stub_only_its_own_settings():
    """No env_file on the stubs: .env holds the workers' B2 keys, which the orchestrator must never see."""
    from orchestrator_stub.settings import StubSettings

    services = _compose()["services"]
    for name in ("stub", "stub-queue"):
        assert "env_file" not in services[name], f"{name} would get every variable in .env"
        environment = services[name]["environment"]
        assert set(environment) <= set(StubSettings.model_fields), name
        assert not any(key.startswith("B2_") for key in environment), name
        assert "WEBHOOK_SECRET" in environment, f"{name}: jobs with a notify_url need it"


def test_deploy_doc_shows_the_settings_the_image_sets():
    """The deploy guide's table of image settings is the Dockerfile's runtime ENV, setting for setting."""
    text = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    table = text.split("## Settings")[1].split("\n## ")[0]
    documented = dict(re.findall(r"^\| `([A-Z0-9_]+)` \| `([^`]*)` \|", table, re.M))
    dockerfile = (REPO / "Dockerfile.fastwan").read_text(encoding="utf-8")
    runtime_env = dockerfile.split("ENV PATH=/opt/venv/bin:$PATH \\")[-1].split("\n\n")[0]
    image = dict(re.findall(r"^\s+([A-Z0-9_]+)=(\S+?)(?: \\)?$", runtime_env, re.M))
    assert documented == {name: value for name, value in image.items() if name in Settings.model_fields}
    assert set(documented) >= {"WORKER_MODE", "STORAGE_BACKEND", "STATE_DIR"}


# --- the real app ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _health(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@pytest.mark.skipif(
    not (REPO / "worker_app_fastwan" / "queue_mode.py").exists(),
    reason="worker_app_fastwan/queue_mode.py (the `serve` command) is not written yet",
)
def test_real_app_with_stand_in_salad_starts_and_drains_on_sigterm(fake, run_script):
    port = _free_port()
    env = _env(
        fake,
        PYTHON=sys.executable,
        PIPELINE_BACKEND="tiny",
        STORAGE_BACKEND="local",
        PORT=str(port),
        HOST="127.0.0.1",
        LOCAL_OUTPUT_DIR=str(fake / "outputs"),
        STATE_DIR=str(fake / "state"),
        DRAIN_TIMEOUT_S="10",
        HF_HUB_OFFLINE="1",
    )
    script = run_script(env)
    salad_pid = int(_wait_for(fake / "salad.pid"))
    deadline, seen = time.monotonic() + 120, []
    while time.monotonic() < deadline and script.proc.poll() is None:
        status = _health(port)
        seen.append(status)
        if status == 200:
            break
        time.sleep(0.25)
    assert script.proc.poll() is None, script.finish()[2][-3000:]
    assert seen[-1] == 200, f"/health never answered 200: {seen[-5:]}"
    assert 503 in seen or None in seen or len(seen) == 1, "503 or no answer while starting"
    script.proc.send_signal(signal.SIGTERM)
    code, _, err = script.finish(timeout=60)
    assert code == 0, err[-3000:]
    assert (fake / "salad.term").exists() and _gone_soon(salad_pid)
    assert _health(port) is None, "the app is gone"


# --- linters ----------------------------------------------------------------------------------------------


def _tool(name: str) -> str:
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed")
    return found


def test_script_parses_and_is_executable():
    assert os.access(SCRIPT, os.X_OK)
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_shellcheck_clean():
    files = [SCRIPT, *sorted(FIXTURES.glob("*.sh"))]
    proc = subprocess.run([_tool("shellcheck"), *map(str, files)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_container_runs_under_an_init():
    """PID 1 reaps orphans and forwards signals: tini in the image, Docker's init where compose replaces it."""
    dockerfile = (REPO / "Dockerfile.fastwan").read_text(encoding="utf-8")
    image = dockerfile.split(" AS image")[1].split(" AS runtime")[0]  # what runtime and fastvideo share
    entrypoint = re.findall(r"^ENTRYPOINT (.+)$", image, re.M)
    assert entrypoint == ['["/usr/bin/tini", "--", "/app/run_fastwan_worker.sh"]']
    system = dockerfile.split(" AS os")[1].split("\nFROM ")[0]  # the image's FROM os
    installs = re.search(r"apt-get install[^&]*", system)
    assert installs is not None and re.search(r"\btini\b", installs.group(0))
    stub = (REPO / "Dockerfile.stub").read_text(encoding="utf-8")
    assert re.search(r'^ENTRYPOINT \["/usr/bin/tini", "--", ', stub, re.M)
    for name, service in _compose()["services"].items():
        if "entrypoint" in service:  # the image's tini is bypassed: Docker's init takes its place
            assert service.get("init") is True, name


def test_hadolint_clean():
    proc = subprocess.run(
        [_tool("hadolint"), str(REPO / "Dockerfile.fastwan"), str(REPO / "Dockerfile.stub")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
