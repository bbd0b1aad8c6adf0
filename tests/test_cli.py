"""`python -m worker_app_fastwan`: the one-shot generate command and start-up refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers_video import gradient_image, read_video
from stub_fixtures import REPO


def run_cli(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "STATE_DIR": str(tmp_path / "state"), **env}
    return subprocess.run(
        [sys.executable, "-m", "worker_app_fastwan", *args],
        env=full_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_generate_image_to_video_from_a_local_file(tmp_path):
    gradient_image(300, 200).save(tmp_path / "start.png")
    out = tmp_path / "clips" / "fox.mp4"
    done = run_cli(
        tmp_path,
        "generate",
        "--prompt",
        "a fox wakes up",
        "--image",
        "start.png",
        "--width",
        "320",
        "--height",
        "256",
        "--frames",
        "13",
        "--fps",
        "10",
        "--seed",
        "8",
        "--out",
        str(out),
        PIPELINE_BACKEND="tiny",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["mode"], result["seed"], result["num_frames"]) == ("i2v", 8, 13)
    assert result["video_url"] == out.resolve().as_uri() and result["bytes"] == out.stat().st_size
    frames, meta = read_video(out)
    assert frames.shape == (13, 256, 320, 3) and meta["fps"] == 10


def test_generate_refuses_a_bad_field_with_its_name(tmp_path):
    done = run_cli(tmp_path, "generate", "--prompt", "x", "--frames", "10", "--out", "x.mp4", PIPELINE_BACKEND="tiny")
    assert done.returncode == 1
    error = json.loads(done.stderr.strip().splitlines()[-1])["error"]
    assert error["code"] == "invalid_input" and error["message"].startswith("num_frames:")
    assert not (tmp_path / "x.mp4").exists()


def test_bad_setting_exits_2_with_one_line(tmp_path):
    done = run_cli(tmp_path, "serve", PIPELINE_BACKEND="tensorrt")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "PIPELINE_BACKEND" in done.stderr


def test_buffer_mode_needs_an_orchestrator(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ORCHESTRATOR_BASE_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "worker_app_fastwan", "buffer"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 2 and "ORCHESTRATOR_BASE_URL" in done.stderr
