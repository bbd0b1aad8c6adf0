"""`python -m worker_app_fastwan serve|buffer|run|generate|download-model`.

Settings are read here, once, and passed down. A bad setting prints one line naming it and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import sys
import uuid
from pathlib import Path

from worker_app_fastwan.errors import JobFailure
from worker_app_fastwan.exit_codes import ExitCode
from worker_app_fastwan.settings import Settings, SettingsError, load_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker_app_fastwan", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="start the mode WORKER_MODE names (queue or buffer)")
    sub.add_parser("serve", help="queue mode: FastAPI on PORT for Salad's job queue")
    sub.add_parser("buffer", help="buffer mode: claim jobs from ORCHESTRATOR_BASE_URL")
    sub.add_parser("download-model", help="fetch MODEL_ID into the model cache, with progress")
    gen = sub.add_parser("generate", help="run one job here, with no orchestrator")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt")
    gen.add_argument("--image", help="a local file or an http(s) URL: image-to-video")
    gen.add_argument("--width", type=int, default=1280)
    gen.add_argument("--height", type=int, default=704)
    gen.add_argument("--frames", type=int, default=121, dest="num_frames")
    gen.add_argument("--fps", type=int, default=24)
    gen.add_argument("--steps", type=int, default=3, dest="num_inference_steps")
    gen.add_argument("--seed", type=int)
    gen.add_argument("--out", type=Path, default=Path("video.mp4"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        if args.command == "buffer" or (args.command == "run" and settings.WORKER_MODE == "buffer"):
            settings.require_orchestrator()
    except SettingsError as exc:
        print(f"fastwan-worker: {exc}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    from worker_app_fastwan.logs import setup_logging

    setup_logging(settings.LOG_LEVEL)
    command = settings.WORKER_MODE if args.command == "run" else args.command
    logging.getLogger("worker_app_fastwan").info("settings", extra={"command": command, **settings.summary()})
    if command in ("queue", "serve"):
        from worker_app_fastwan.queue_mode import serve

        return serve(settings)
    if command == "buffer":
        from worker_app_fastwan.buffer_mode import run_buffer

        return asyncio.run(run_buffer(settings))
    if command == "download-model":
        from worker_app_fastwan.model_fetch import main_download

        return main_download(settings)
    return asyncio.run(generate_once(settings, args))


class _OnePathStorage:
    """The one-shot CLI's storage: the video goes exactly where --out says."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def upload(self, local_path: Path, job_id: str, sha256: str):
        from worker_app_fastwan.storage import StoredObject

        self.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(local_path), self.out)
        return StoredObject(key=str(self.out), url=self.out.resolve().as_uri(), bytes=self.out.stat().st_size)


async def generate_once(settings: Settings, args: argparse.Namespace) -> int:
    from worker_app_fastwan.runner import JobRunner
    from worker_app_fastwan.schema import parse_job_input

    job = {
        k: getattr(args, k)
        for k in ("prompt", "negative_prompt", "width", "height", "num_frames", "fps", "num_inference_steps", "seed")
        if getattr(args, k) is not None
    }
    image_file = None
    if args.image:
        if args.image.startswith(("http://", "https://")):
            job["image_url"] = args.image
        else:
            image_file = Path(args.image)
            if not image_file.is_file():
                print(f"fastwan-worker: --image: no such file {image_file}", file=sys.stderr)
                return ExitCode.BAD_INPUT
    try:
        parse_job_input(job)  # a bad field is reported before the model loads
    except JobFailure as exc:
        print(json.dumps({"error": exc.to_error().model_dump(mode="json")}), file=sys.stderr)
        return 1
    runner = JobRunner(settings, _OnePathStorage(args.out))
    await runner.start()
    try:
        result = await runner.run(f"cli-{uuid.uuid4().hex[:12]}", job, image_file=image_file)
    except JobFailure as exc:
        print(json.dumps({"error": exc.to_error().model_dump(mode="json")}), file=sys.stderr)
        return 1
    finally:
        await runner.close()
    print(json.dumps(result.model_dump(mode="json")))
    return 0
