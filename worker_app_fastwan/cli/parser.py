"""The command line's options and help: every command says what it does, its options with units and
defaults, one example, and the exit codes (`core/exit_codes.ExitCode`). A new command registers here and in
`cli._dispatch`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from worker_app_fastwan.core.exit_codes import ExitCode
from worker_app_fastwan.core.schema import MAX_SEED, MAX_SIDE, MIN_SIDE, SIDE_MULTIPLE, JobInput

PROG = "python -m worker_app_fastwan"
EXIT_CODES = "\n".join(
    f"  {int(code):>3}  {text}"
    for code, text in (
        (ExitCode.OK, "done"),
        (ExitCode.FAILED, "the generation (or the worker's GPU process) failed"),
        (ExitCode.BAD_INPUT, "a bad setting, option or input: fix it and run again"),
        (ExitCode.MODEL_UNAVAILABLE, "the model cannot be loaded (no weights, or no CUDA device)"),
        (ExitCode.INTERRUPTED, "stopped by Ctrl-C"),
    )
)


def _default(field: str) -> Any:
    return JobInput.model_fields[field].default


def _limit(field: str, kind: str) -> Any:
    """A bound (`ge`/`le`) of a job field as the schema states it, so the help never disagrees with it."""
    return next(getattr(m, kind) for m in JobInput.model_fields[field].metadata if hasattr(m, kind))


def _add(sub: argparse._SubParsersAction, name: str, summary: str, description: str, example: str):
    return sub.add_parser(
        name,
        help=summary,
        description=f"{summary}.\n\n{description}",
        epilog=f"example:\n  {example}\n\nexit codes:\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="FastWan2.2-TI2V-5B video worker: text- and image-to-video as H.264 MP4.\n"
        "Settings come from the environment (and .env); see the README's settings table.",
        epilog=f'example:\n  {PROG} generate --prompt "a red fox in snow" --out fox.mp4\n\n'
        f"Run `{PROG} COMMAND --help` for a command's options.\n\nexit codes:\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add(
        sub,
        "run",
        "start the mode WORKER_MODE names (queue or buffer)",
        "The container's default command.",
        f"WORKER_MODE=buffer ORCHESTRATOR_BASE_URL=http://localhost:8080 INTERNAL_API_KEY=… {PROG} run",
    )
    _add(
        sub,
        "serve",
        "queue mode: HTTP /generate on PORT for Salad's job queue",
        "Listens on HOST:PORT (default 0.0.0.0:8000): /health, /generate, /metrics.",
        f"PORT=8000 {PROG} serve",
    )
    _add(
        sub,
        "buffer",
        "buffer mode: claim jobs from ORCHESTRATOR_BASE_URL",
        "Claims, heartbeats every HEARTBEAT_INTERVAL_S (default 5 s), reports statuses; SIGTERM drains.",
        f"ORCHESTRATOR_BASE_URL=http://localhost:8080 INTERNAL_API_KEY=… {PROG} buffer",
    )
    check = _add(
        sub,
        "check-settings",
        "check every setting and exit: one line per problem on stderr, exit 2 if any",
        "What the container's entrypoint runs first. Values of secrets are never shown.",
        f"WORKER_MODE=buffer {PROG} check-settings",
    )
    check.add_argument("--mode", choices=("queue", "buffer"), help="the mode to check for (default: WORKER_MODE)")
    dl = _add(
        sub,
        "download-model",
        "fetch the model weights (MODEL_ID) into the Hugging Face cache",
        "About 24 GB; resumes a partial download; returns at once when the model is already there.\n"
        "Into HF_HOME's cache, or into MODEL_PATH when that is set. Ends with where the weights are and\n"
        "their size; the folder goes to stdout when stdout is not a terminal.",
        f"HF_HOME=/data/hf {PROG} download-model",
    )
    dl.add_argument("--json", action="store_true", help="print {model_id, path, bytes, files} as JSON on stdout")
    from worker_app_fastwan.doctor import add_arguments as doctor_arguments

    doctor_arguments(
        _add(
            sub,
            "doctor",
            "check whether this box can serve as configured, one line per check",
            "Driver and CUDA, each GPU and the jobs it admits, host RAM, NVENC, where the weights come from\n"
            "and room for them, storage (a B2 probe object written and deleted), the orchestrator and its key.\n"
            "Exit 0 only when everything the configured mode needs passes. No secret is printed.",
            f"{PROG} doctor --generate",
        )
    )
    _generate_options(
        _add(
            sub,
            "generate",
            "make one video here, with no orchestrator",
            "Loads the model (PIPELINE_BACKEND), generates, and writes an MP4. On a terminal: a progress display\n"
            "and a summary on stderr. The JSON result goes to stdout when stdout is not a terminal, or with --json.",
            f'{PROG} generate --prompt "a red fox in snow" --frames 81 --seed 7 --out fox.mp4',
        )
    )
    return parser


def _generate_options(gen: argparse.ArgumentParser) -> None:
    side = f"pixels, {MIN_SIDE}-{MAX_SIDE}, a multiple of {SIDE_MULTIPLE}"
    frames, fps, steps = "num_frames", "fps", "num_inference_steps"
    gen.add_argument("--prompt", required=True, metavar="TEXT", help="what the video shows (required)")
    gen.add_argument("--negative-prompt", metavar="TEXT", help="accepted; the distilled model ignores it")
    gen.add_argument("--image", metavar="PATH_OR_URL", help="first frame: a local file or an http(s) URL")
    gen.add_argument(
        "--width", type=int, metavar="PX", default=_default("width"), help=f"{side} (default: %(default)s)"
    )
    gen.add_argument(
        "--height", type=int, metavar="PX", default=_default("height"), help=f"{side} (default: %(default)s)"
    )
    gen.add_argument(
        "--frames",
        type=int,
        metavar="N",
        default=_default(frames),
        dest=frames,
        help=f"frames, 4k+1, {_limit(frames, 'ge')}-{_limit(frames, 'le')} (default: %(default)s: 5 s at 24 fps)",
    )
    gen.add_argument(
        "--fps",
        type=int,
        metavar="N",
        default=_default(fps),
        help=f"frames per second, {_limit(fps, 'ge')}-{_limit(fps, 'le')} (default: %(default)s)",
    )
    gen.add_argument(
        "--steps",
        type=int,
        metavar="N",
        default=_default(steps),
        dest=steps,
        help=f"denoising steps, {_limit(steps, 'ge')}-{_limit(steps, 'le')} (default: %(default)s)",
    )
    gen.add_argument(
        "--seed", type=int, metavar="N", help=f"0-{MAX_SEED - 1}; the same seed gives the same video (default: random)"
    )
    gen.add_argument(
        "--out", type=Path, metavar="FILE", default=Path("video.mp4"), help="the MP4 to write (default: %(default)s)"
    )
    gen.add_argument("--json", action="store_true", help="print the JSON result on stdout even on a terminal")
