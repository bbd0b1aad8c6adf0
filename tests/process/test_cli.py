"""`python -m worker_app_fastwan` as a person meets it (in a pseudo-terminal) and as a script does (piped).

In a terminal: text, a progress display, a summary, one-line errors. Piped: JSON lines on stderr and the
JSON result on stdout. Every exit code of `core/exit_codes.ExitCode` is produced by a real command here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pexpect
import pyte
from rich.filesize import decimal
from support.stubs import REPO
from support.video import gradient_image, read_video

from worker_app_fastwan.cli.parser import build_parser
from worker_app_fastwan.core.exit_codes import ExitCode
from worker_app_fastwan.core.settings import DEFAULT_MODEL_ID

COLUMNS = 400  # wide enough that no logical line wraps: a line counted is a line printed
SMALL = ("--width", "128", "--height", "128", "--frames", "9", "--fps", "8")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
STAGES = ("loading the model", "encoding the prompt", "denoising", "decoding", "encoding the video", "writing the file")


def _env(tmp_path: Path, **env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LOG_", "ORCHESTRATOR_", "PIPELINE_"))}
    return {
        **base,
        "PYTHONPATH": str(REPO),
        "STATE_DIR": str(tmp_path / "state"),
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_OFFLINE": "1",
        **env,
    }


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Piped: stdout and stderr are pipes, as in a script or a container."""
    return subprocess.run(
        [sys.executable, "-m", "worker_app_fastwan", *args],
        env=_env(tmp_path, **env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )


def spawn_in_terminal(tmp_path: Path, *args: str, **env: str) -> pexpect.spawn:
    return pexpect.spawn(
        sys.executable,
        ["-m", "worker_app_fastwan", *args],
        env=_env(tmp_path, **env),
        cwd=str(tmp_path),
        encoding="utf-8",
        timeout=180,
        dimensions=(40, COLUMNS),
    )


def run_in_terminal(tmp_path: Path, *args: str, **env: str) -> tuple[int, str]:
    """In a pseudo-terminal (stdout and stderr both the terminal): the exit status and everything shown."""
    term = spawn_in_terminal(tmp_path, *args, **env)
    term.expect(pexpect.EOF)
    term.close()
    return term.exitstatus, term.before


def screen_lines(raw: str) -> list[str]:
    """What a terminal shows at the end (pyte emulates one): the non-empty lines, colours removed."""
    screen = pyte.Screen(COLUMNS, 1000)
    pyte.Stream(screen).feed(raw)
    return [line.rstrip() for line in screen.display if line.strip()]


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --- generate in a terminal ------------------------------------------------------------------------------


def test_generate_in_a_terminal_shows_progress_stages_steps_and_a_summary(tmp_path):
    status, raw = run_in_terminal(
        tmp_path, "generate", "--prompt", "a fox", *SMALL, "--seed", "4", "--out", "fox.mp4", PIPELINE_BACKEND="tiny"
    )
    plain = ANSI.sub("", raw)
    assert status == ExitCode.OK, plain[-3000:]
    assert not [line for line in plain.replace("\r", "\n").splitlines() if line.lstrip().startswith("{")], plain
    # The live line walks through the stages in order, and through each denoising step.
    firsts = [plain.index(stage) for stage in STAGES]
    assert firsts == sorted(firsts), plain
    steps = [plain.index(f"step {k}/3") for k in (1, 2, 3)]
    assert steps == sorted(steps)
    percents = [int(p) for p in re.findall(r"(\d+)%", plain)]
    assert percents[0] < 10 and percents[-1] == 100 and percents == sorted(percents)
    # Every finished stage stays on screen with its duration.
    done = [line for line in screen_lines(raw) if line.startswith("✓")]
    assert [re.sub(r"\s+[\d.]+ s$", "", d)[2:] for d in done] == list(STAGES)
    # The summary: file, size, duration = frames ÷ fps, resolution, seed, timings.
    out = tmp_path / "fox.mp4"
    size = decimal(out.stat().st_size)
    summary = "\n".join(screen_lines(raw)[-5:])
    assert re.search(rf"video\s+fox\.mp4\s+\({re.escape(size)}\)", summary), summary
    assert re.search(r"duration\s+1\.12 s\s+\(9 frames ÷ 8 fps\)", summary), summary
    assert re.search(r"resolution\s+128×128", summary) and re.search(r"seed\s+4\b", summary), summary
    assert re.search(r"timings\s+model load [\d.]+ s · generation [\d.]+ s · encode", summary), summary
    assert "torchvision" not in plain  # the image processor's notice is filtered at its source logger
    frames, _ = read_video(out)
    assert frames.shape == (9, 128, 128, 3)


def test_json_flag_puts_the_outcome_on_stdout_in_a_terminal_too(tmp_path):
    status, raw = run_in_terminal(tmp_path, "generate", "--prompt", "x", "--frames", "10", "--json")
    lines = screen_lines(raw)
    assert status == ExitCode.BAD_INPUT
    outcome = json.loads(next(line for line in lines if line.startswith("{")))
    assert outcome["error"]["code"] == "invalid_input" and outcome["error"]["message"].startswith("num_frames:")
    assert lines[-1].startswith("fastwan-worker: error: invalid_input: num_frames: must be 4k+1"), lines


def test_model_not_available_in_a_terminal_is_one_line_and_exit_3(tmp_path):
    status, raw = run_in_terminal(
        tmp_path, "generate", "--prompt", "a fox", PIPELINE_BACKEND="diffusers", ALLOW_CPU_INFERENCE="true"
    )
    lines = screen_lines(raw)
    assert status == ExitCode.MODEL_UNAVAILABLE, raw[-3000:]
    assert len(lines) == 1, lines  # the progress display clears itself: only the error stays
    assert lines[0].startswith(f"fastwan-worker: error: model load failed: model {DEFAULT_MODEL_ID} is")
    assert "is not in the cache" in lines[0] and "MODEL_PATH" in lines[0] and "download-model" in lines[0]
    assert "Traceback" not in raw


def test_ctrl_c_stops_at_once_with_exit_130(tmp_path):
    term = spawn_in_terminal(tmp_path, "generate", "--prompt", "a fox", *SMALL, PIPELINE_BACKEND="tiny")
    term.expect("loading the model")
    term.sendintr()
    term.expect(pexpect.EOF, timeout=30)
    term.close()
    lines = screen_lines(term.before)
    assert term.exitstatus == ExitCode.INTERRUPTED, term.before[-2000:]
    assert lines == ["fastwan-worker: error: interrupted"], lines
    assert not (tmp_path / "video.mp4").exists()


# --- piped: JSON only ------------------------------------------------------------------------------------


def test_generate_piped_is_json_lines_and_the_result_on_stdout(tmp_path):
    gradient_image(300, 200).save(tmp_path / "start.png")
    out = tmp_path / "clips" / "fox.mp4"
    done = run_cli(
        tmp_path,
        "generate",
        *("--prompt", "a fox wakes up", "--image", "start.png", *SMALL[:4], "--frames", "13", "--fps", "10"),
        *("--seed", "8", "--out", str(out)),
        PIPELINE_BACKEND="tiny",
    )
    assert done.returncode == ExitCode.OK, done.stderr[-3000:]
    records = json_lines(done.stderr)  # every stderr line is a JSON record
    assert {"settings", "model ready", "job completed"} <= {r["event"] for r in records}
    assert "torchvision" not in done.stderr
    (result,) = json_lines(done.stdout)
    assert (result["mode"], result["seed"], result["num_frames"]) == ("i2v", 8, 13)
    assert result["video_url"] == out.resolve().as_uri() and result["bytes"] == out.stat().st_size
    frames, meta = read_video(out)
    assert frames.shape == (13, 128, 128, 3) and meta["fps"] == 10


def test_generation_failure_piped_is_exit_1_with_the_error_on_stdout(tmp_path):
    done = run_cli(tmp_path, "generate", "--prompt", "a fox [tiny:oom]", *SMALL, PIPELINE_BACKEND="tiny")
    assert done.returncode == ExitCode.FAILED, done.stderr[-3000:]
    (outcome,) = json_lines(done.stdout)
    assert outcome["error"]["code"] == "out_of_memory" and outcome["error"]["retryable"] is True
    last = json_lines(done.stderr)[-1]
    assert last["exit_code"] == ExitCode.FAILED and last["event"].startswith("out_of_memory: the GPU ran out of memory")
    assert "Traceback" not in done.stderr


def test_no_cuda_refusal_in_a_terminal_before_any_download(tmp_path):
    status, raw = run_in_terminal(
        tmp_path,
        *("generate", "--prompt", "a fox"),
        PIPELINE_BACKEND="diffusers",
        HF_HUB_OFFLINE="0",
        HF_ENDPOINT="http://127.0.0.1:9",  # if it did try to download, it would fail here, not on the internet
    )
    lines = screen_lines(raw)
    assert status == ExitCode.MODEL_UNAVAILABLE, raw[-3000:]
    # While it starts, the display says the weights are not there yet (a first start downloads them).
    assert "loading the model (not in the cache: downloading about 24 GB first)" in ANSI.sub("", raw)
    assert len(lines) == 1 and lines[0].startswith("fastwan-worker: error: model load failed: no CUDA device"), lines
    assert "for hours" in lines[0] and "PIPELINE_BACKEND=tiny" in lines[0] and "ALLOW_CPU_INFERENCE=true" in lines[0]
    assert "Traceback" not in raw and not list((tmp_path / "hf-home").rglob("*.safetensors"))


def test_bad_field_is_exit_2_before_the_model_loads(tmp_path):
    done = run_cli(tmp_path, "generate", "--prompt", "x", "--frames", "10", "--out", "x.mp4", PIPELINE_BACKEND="tiny")
    assert done.returncode == ExitCode.BAD_INPUT
    (outcome,) = json_lines(done.stdout)
    assert outcome["error"]["code"] == "invalid_input" and outcome["error"]["message"].startswith("num_frames:")
    last = json_lines(done.stderr)[-1]
    assert last["exit_code"] == ExitCode.BAD_INPUT and "model ready" not in done.stderr
    assert not (tmp_path / "x.mp4").exists()


def test_missing_image_file_is_exit_2_with_a_hint(tmp_path):
    done = run_cli(tmp_path, "generate", "--prompt", "x", "--image", "nope.png", LOG_FORMAT="text")
    assert done.returncode == ExitCode.BAD_INPUT
    assert done.stderr.strip().splitlines()[-1] == (
        "fastwan-worker: error: --image: no such file nope.png (hint: give an image file or an http(s) URL)"
    )


def test_debug_level_shows_the_traceback(tmp_path):
    done = run_cli(tmp_path, "generate", "--prompt", "x", "--frames", "10", LOG_LEVEL="DEBUG", LOG_FORMAT="text")
    assert done.returncode == ExitCode.BAD_INPUT
    assert "Traceback (most recent call last)" in done.stderr and "parse_job_input" in done.stderr


def test_generate_refuses_undistilled_step_counts(tmp_path):
    done = run_cli(tmp_path, "generate", "--prompt", "x", "--steps", "4", "--out", "x.mp4", PIPELINE_BACKEND="tiny")
    assert done.returncode != 0
    assert "invalid_input" in done.stderr and "num_inference_steps" in done.stderr and "1-3" in done.stderr
    assert not (tmp_path / "x.mp4").exists()


def test_bad_setting_exits_2_with_one_line(tmp_path):
    done = run_cli(tmp_path, "serve", PIPELINE_BACKEND="tensorrt")
    assert done.returncode == ExitCode.BAD_INPUT
    (line,) = json_lines(done.stderr)
    assert "PIPELINE_BACKEND" in line["event"] and line["exit_code"] == 2


def test_bad_setting_in_a_terminal_is_one_text_line(tmp_path):
    status, raw = run_in_terminal(tmp_path, "generate", "--prompt", "x", LOG_FORMAT="yaml")
    assert status == ExitCode.BAD_INPUT
    assert screen_lines(raw) == [
        "fastwan-worker: error: invalid setting LOG_FORMAT: Input should be 'auto', 'json' or 'text' (got 'yaml')"
    ]


def test_buffer_mode_needs_an_orchestrator(tmp_path):
    done = run_cli(tmp_path, "buffer")
    assert done.returncode == ExitCode.BAD_INPUT and "ORCHESTRATOR_BASE_URL" in done.stderr


# --- download-model ---------------------------------------------------------------------------------------


def _cached_model(hf_home: Path, model_id: str) -> Path:
    """A hub cache holding a small snapshot of `model_id`, laid out as huggingface_hub writes it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_home / "hub" / ("models--" + model_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    (snapshot / "vae").mkdir(parents=True)
    (snapshot / "model_index.json").write_text(json.dumps({"_class_name": "WanDMDPipeline"}))
    (snapshot / "vae" / "weights.bin").write_bytes(b"\0" * 1500)
    return snapshot


def test_download_model_in_a_terminal_ends_with_where_and_how_big(tmp_path):
    snapshot = _cached_model(tmp_path / "hf-home", DEFAULT_MODEL_ID)
    size = decimal(1500 + len(json.dumps({"_class_name": "WanDMDPipeline"})))
    status, raw = run_in_terminal(tmp_path, "download-model")
    lines = screen_lines(raw)
    assert status == ExitCode.OK, raw
    assert re.fullmatch(r"folder\s+" + re.escape(str(snapshot)), lines[-2]), lines
    assert re.fullmatch(rf"size\s+{re.escape(size)} in 2 files", lines[-1]), lines
    assert not [line for line in lines if line.startswith("{")]


def test_download_model_piped_prints_the_folder_or_json(tmp_path):
    snapshot = _cached_model(tmp_path / "hf-home", DEFAULT_MODEL_ID)
    plain = run_cli(tmp_path, "download-model")
    assert plain.returncode == ExitCode.OK and plain.stdout.strip() == str(snapshot)
    as_json = run_cli(tmp_path, "download-model", "--json")
    assert json.loads(as_json.stdout) == {
        "model_id": DEFAULT_MODEL_ID,
        "path": str(snapshot),
        "bytes": 1500 + len(json.dumps({"_class_name": "WanDMDPipeline"})),
        "files": 2,
    }
    assert json_lines(as_json.stderr)[-1]["event"] == "model ready"


def test_download_model_offline_is_exit_3_and_one_json_error(tmp_path):
    done = run_cli(tmp_path, "download-model")
    assert done.returncode == ExitCode.MODEL_UNAVAILABLE
    records = json_lines(done.stderr)
    assert [r["event"] for r in records][:-1] == ["settings"]
    assert "offline" in records[-1]["event"] and records[-1]["exit_code"] == 3 and done.stdout == ""


# --- help -------------------------------------------------------------------------------------------------


def test_help_of_the_program_and_every_command(tmp_path):
    top = run_cli(tmp_path, "--help")
    assert top.returncode == 0 and "example:\n  python -m worker_app_fastwan generate" in top.stdout
    for code in ExitCode:
        assert re.search(rf"^\s+{int(code)}\s+\S", top.stdout, re.M), f"exit code {code} is not documented"
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(commands) == {"run", "serve", "buffer", "download-model", "generate"} | set(commands)
    for name, page in commands.items():
        assert name in top.stdout
        text = page.format_help()
        assert "example:\n  " in text and "python -m worker_app_fastwan" in text.split("example:")[1], text
        assert "exit codes:" in text
    generate = commands["generate"].format_help()
    for option in ("--width PX", "--height PX", "--frames N", "--fps N", "--steps N", "--seed N", "--out FILE"):
        assert option in generate
    assert "(default: 1280)" in generate and "frames per second" in generate and "(default: video.mp4)" in generate
