"""`python -m worker_app_fastwan run|serve|buffer|generate|download-model`: the command line.

Settings are read here, once, and passed down. Every command ends through `cli/errors.run_command`: an
exit code from `core/exit_codes.ExitCode` and, on failure, one line saying what failed and what to do.
Output by audience: on a terminal, `generate` and `download-model` show progress and a short summary on
stderr; the machine-readable result goes to stdout when stdout is not a terminal (or with `--json`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from worker_app_fastwan.cli.errors import CommandError, check_settings, classify, report, run_command
from worker_app_fastwan.cli.parser import build_parser
from worker_app_fastwan.core.exit_codes import ExitCode
from worker_app_fastwan.core.settings import Settings, SettingsError, load_settings

# Commands that show their own progress and summary on a terminal instead of log records.
INTERACTIVE = ("generate", "download-model")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-settings":  # before load_settings: it reports every problem, not the first
        return int(check_settings(args.mode))
    try:
        settings = load_settings()
        if args.command == "buffer" or (args.command == "run" and settings.WORKER_MODE == "buffer"):
            settings.require_orchestrator()
    except SettingsError as exc:
        return int(report(classify(exc)))
    from worker_app_fastwan.core.logs import hide_own_records, setup_logging

    fmt = setup_logging(settings.LOG_LEVEL, fmt=settings.LOG_FORMAT)
    command = settings.WORKER_MODE if args.command == "run" else args.command
    # The GPU child logs in the parent's format; on a terminal the progress display stands in for the
    # worker's own records unless LOG_LEVEL asks for them.
    run_settings = settings.model_copy(update={"LOG_FORMAT": fmt})
    display = command in INTERACTIVE and fmt == "text" and sys.stderr.isatty()
    if display and "LOG_LEVEL" not in settings.model_fields_set:
        hide_own_records()
        run_settings = run_settings.model_copy(update={"LOG_LEVEL": "WARNING"})
    logging.getLogger("worker_app_fastwan").info("settings", extra={"command": command, **settings.summary()})
    return run_command(
        lambda: _dispatch(command, run_settings, args, display=display, fmt=fmt),
        fmt=fmt,
        debug=settings.LOG_LEVEL == "DEBUG",
    )


def _dispatch(command: str, settings: Settings, args: argparse.Namespace, *, display: bool, fmt: str) -> int:
    if command in ("queue", "serve"):
        from worker_app_fastwan.queue_mode import serve

        return serve(settings)
    if command == "buffer":
        from worker_app_fastwan.buffer.box import run_buffer

        return asyncio.run(run_buffer(settings))
    if command == "doctor":
        from worker_app_fastwan.doctor import run_doctor

        return run_doctor(settings, load=args.load, generate=args.generate)
    json_out = args.json or not sys.stdout.isatty() or fmt == "json"
    if command == "download-model":
        from worker_app_fastwan.cli.download_model import main_download

        return main_download(settings, human=fmt == "text", json_out=args.json, path_out=not sys.stdout.isatty())
    return asyncio.run(generate_once(settings, args, display=display, human=fmt == "text", json_out=json_out))


class _OnePathStorage:
    """The one-shot CLI's storage: the video goes exactly where --out says (the poster nowhere: one file asked)."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def upload(self, local_path: Path, job_id: str, sha256: str, poster: Path | None = None):
        from worker_app_fastwan.job.storage import StoredObject

        self.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(local_path), self.out)
        return StoredObject(key=str(self.out), url=self.out.resolve().as_uri(), bytes=self.out.stat().st_size)


def _job_fields(args: argparse.Namespace) -> tuple[dict[str, Any], Path | None]:
    """The job input from the options, and a local image file if --image names one."""
    names = ("prompt", "negative_prompt", "width", "height", "num_frames", "fps", "num_inference_steps", "seed")
    job = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if not args.image:
        return job, None
    if args.image.startswith(("http://", "https://")):
        job["image_url"] = args.image
        return job, None
    image_file = Path(args.image)
    if not image_file.is_file():
        raise CommandError(
            ExitCode.BAD_INPUT, f"--image: no such file {image_file}", "give an image file or an http(s) URL"
        )
    return job, image_file


async def generate_once(
    settings: Settings, args: argparse.Namespace, *, display: bool, human: bool, json_out: bool
) -> int:
    from worker_app_fastwan.core.errors import JobFailure
    from worker_app_fastwan.edge.job_input import parse_job_input

    try:
        job, image_file = _job_fields(args)
        parse_job_input(job)  # a bad field is reported before the model loads
        return await _generate(settings, args.out, job, image_file, display=display, human=human, json_out=json_out)
    except JobFailure as exc:
        if json_out:  # scripts read the outcome from stdout either way
            print(json.dumps({"error": exc.to_error().model_dump(mode="json")}), flush=True)
        raise


def _loading_label(settings: Settings) -> str:
    """Say so when the first start will download the weights: minutes of "loading" would look like a hang."""
    from worker_app_fastwan.cli.display import LABELS, LOADING

    if settings.PIPELINE_BACKEND == "tiny" or settings.MODEL_PATH is not None:
        return LABELS[LOADING]
    from worker_app_fastwan.model.fetch import cached_snapshot, hub_offline

    if hub_offline() or cached_snapshot(settings.MODEL_ID) is not None:  # no network call either way
        return LABELS[LOADING]
    return f"{LABELS[LOADING]} (not in the cache: downloading about 24 GB first)"


async def _generate(
    settings: Settings,
    out: Path,
    job: dict[str, Any],
    image_file: Path | None,
    *,
    display: bool,
    human: bool,
    json_out: bool,
) -> int:
    from worker_app_fastwan.cli.display import GenerateDisplay, print_lines, stderr_console, summary
    from worker_app_fastwan.job.runner import build_runner

    console = stderr_console()
    screen = GenerateDisplay(console, _loading_label(settings)) if display else None
    listeners = [screen.on_progress] if screen else []
    runner = build_runner(settings, _OnePathStorage(out), listeners=listeners)
    try:
        with screen or contextlib.nullcontext():
            started = time.monotonic()
            await runner.start()
            load_s = time.monotonic() - started
            if not runner.ready:
                raise CommandError(ExitCode.MODEL_UNAVAILABLE, runner.unhealthy_reason or "the model did not load")
            result = await runner.run(f"cli-{uuid.uuid4().hex[:12]}", job, image_file=image_file)
            if screen:
                screen.done()
    except asyncio.CancelledError:  # Ctrl-C: stop now; the GPU process ignores SIGINT by design
        await runner.kill()
        raise
    finally:
        await runner.close()
    if human:
        print_lines(console, summary(result, out, load_s))
    if json_out:
        print(json.dumps(result.model_dump(mode="json")), flush=True)
    return ExitCode.OK
