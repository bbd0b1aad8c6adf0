"""`doctor`: one line per check, exit 0 only when the configured mode can run, no secret ever printed.

Real processes for the command (the tiny backend, local storage, the real stub on loopback, the container
entrypoint). The checks themselves, in this process: tests/unit/doctor/test_checks.py.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from support.b2 import doctor_b2_settings, new_api
from support.http_servers import free_port
from support.stubs import API_KEY, REPO, StubProcess

from worker_app_fastwan.core.exit_codes import ExitCode
from worker_app_fastwan.doctor import run_doctor
from worker_app_fastwan.doctor.report import Status
from worker_app_fastwan.model.fetch import REQUIRED_SUBFOLDERS

B2_SECRET = "K005-doctor-secret-app-key-93ab"


def doctor(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("B2_", "ORCHESTRATOR", "INTERNAL"))},
        "PYTHONPATH": str(REPO),
        "STATE_DIR": str(tmp_path / "state"),
        "LOCAL_OUTPUT_DIR": str(tmp_path / "videos"),
        "STORAGE_BACKEND": "local",
        "PIPELINE_BACKEND": "tiny",
        "LOG_FORMAT": "json",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "worker_app_fastwan", "doctor", *args],
        env=full,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


def lines(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Check name → its line, from the doctor's stdout (`<mark> <name>: <reason>`)."""
    found = {}
    for line in done.stdout.splitlines():
        mark, _, rest = line.partition(" ")
        name, sep, _ = rest.partition(":")
        if mark in {s.value for s in Status} and sep:
            found[name] = line
    return found


def test_buffer_box_with_the_stub_passes_everything_with_load_and_generate(tmp_path, stub: StubProcess):
    done = doctor(
        tmp_path, "--load", "--generate", WORKER_MODE="buffer", ORCHESTRATOR_BASE_URL=stub.url, INTERNAL_API_KEY=API_KEY
    )
    assert done.returncode == ExitCode.OK, done.stdout + done.stderr[-3000:]
    found = lines(done)
    for name in ("settings", "state dir", "cuda", "host ram", "nvenc", "model", "storage", "orchestrator", "load"):
        assert name in found, (name, done.stdout)
    assert found["cuda"].startswith("–") and "not needed with PIPELINE_BACKEND=tiny" in found["cuda"]
    assert "not probed" in found["cuda"], "no process importing torch to probe what tiny never uses"
    assert found["orchestrator"].startswith("✓") and "INTERNAL_API_KEY accepted" in found["orchestrator"]
    assert found["storage"].startswith("✓ storage: local")
    assert found["load"].startswith("✓") and "loaded and warmed up" in found["load"]
    assert (
        found["generate"].startswith("✓") and "256×256×9" in found["generate"] and "s generating" in found["generate"]
    )
    assert done.stdout.rstrip().endswith("✓ this box can serve as configured")
    assert API_KEY not in done.stdout + done.stderr
    assert stub.get("/v1/jobs").json()["total"] == 0, "the probe changed nothing on the orchestrator"


def test_wrong_key_fails_without_printing_either_key(tmp_path, stub: StubProcess):
    wrong = "wrong-key-7c1d9e"
    done = doctor(tmp_path, WORKER_MODE="buffer", ORCHESTRATOR_BASE_URL=stub.url, INTERNAL_API_KEY=wrong)
    assert done.returncode == ExitCode.FAILED
    found = lines(done)
    assert found["orchestrator"].startswith("✗") and "refused INTERNAL_API_KEY (HTTP 401)" in found["orchestrator"]
    assert "orchestrator failed" in done.stdout.splitlines()[-1]
    assert wrong not in done.stdout + done.stderr and API_KEY not in done.stdout + done.stderr


def test_unreachable_orchestrator_and_credentials_in_its_url_are_not_printed(tmp_path):
    url = f"http://user:pa55word@127.0.0.1:{free_port()}/base?token=s3cret"
    done = doctor(tmp_path, WORKER_MODE="buffer", ORCHESTRATOR_BASE_URL=url, INTERNAL_API_KEY="k-123456")
    assert done.returncode == ExitCode.FAILED
    assert "unreachable" in lines(done)["orchestrator"]
    for secret in ("pa55word", "k-123456"):
        assert secret not in done.stdout + done.stderr
    assert "s3cret" not in done.stdout, "the doctor's lines show scheme://host:port only"


def test_queue_box_without_orchestrator_passes(tmp_path):
    done = doctor(tmp_path)
    assert done.returncode == ExitCode.OK, done.stdout + done.stderr[-2000:]
    found = lines(done)
    assert found["orchestrator"].startswith("–") and "not set" in found["orchestrator"]
    assert found["load"].startswith("–") and "--load" in found["load"]


def test_production_backend_on_a_cpu_box_fails_and_says_why(tmp_path):
    # The layout doctor checks, without weights: nothing reads them, the load stops at the missing CUDA first.
    model = tmp_path / "model"
    for sub in REQUIRED_SUBFOLDERS:
        (model / sub).mkdir(parents=True)
    (model / "model_index.json").write_text('{"_class_name": "WanPipeline"}\n')
    done = doctor(tmp_path, "--load", PIPELINE_BACKEND="diffusers", MODEL_PATH=str(model))
    assert done.returncode == ExitCode.FAILED
    found = lines(done)
    assert found["cuda"].startswith("✗") and "diffusers needs a CUDA GPU" in found["cuda"]
    assert "CPU-only build" in found["cuda"] or "is_available() is False" in found["cuda"]
    assert found["model"].startswith("✓") and f"MODEL_PATH {model}" in found["model"]
    assert found["load"].startswith("✗") and "no CUDA device" in found["load"]


def test_bad_setting_is_exit_2_with_one_line(tmp_path):
    done = doctor(tmp_path, WORKER_MODE="bogus")
    assert done.returncode == ExitCode.BAD_INPUT
    assert "WORKER_MODE" in done.stderr and done.stdout == ""


def test_entrypoint_runs_doctor(tmp_path):
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": str(REPO),
        "STATE_DIR": str(tmp_path / "state"),
        "LOCAL_OUTPUT_DIR": str(tmp_path / "videos"),
        "STORAGE_BACKEND": "local",
        "PIPELINE_BACKEND": "tiny",
    }
    done = subprocess.run(
        ["bash", str(REPO / "run_fastwan_worker.sh"), "doctor"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert "✓ this box can serve as configured" in done.stdout


# ---- the whole check run in this process (the CUDA probe is still a process of its own) ---------------


def test_run_doctor_masks_secrets_in_every_line(tmp_path):
    api, key_id, key = new_api()
    settings = doctor_b2_settings(tmp_path, key_id, B2_SECRET, bucket="absent")
    out = io.StringIO()
    code = run_doctor(settings, b2_api=api, out=out)
    assert code == ExitCode.FAILED and "✗ storage: b2" in out.getvalue()
    assert B2_SECRET not in out.getvalue()
