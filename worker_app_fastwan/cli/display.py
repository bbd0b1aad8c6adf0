"""What a person at a terminal sees of `generate` and `download-model`: live progress, then a short summary.

The progress display is driven by the same `JobProgress` events the worker reports to an orchestrator
(`JobRunner` listeners). Each finished stage stays on screen with its duration; the live line shows the
current stage, the denoising step, the overall bar and the elapsed time. Everything goes to stderr, so
stdout stays free for the JSON result.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.filesize import decimal
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn

from worker_app_fastwan.core.job_progress import JobProgress
from worker_app_fastwan.core.schema import JobResult, Stage

LOADING = "loading"
LABELS: dict[str, str] = {
    LOADING: "loading the model",
    Stage.queued.value: "queued",
    Stage.downloading.value: "downloading the image",
    Stage.encoding_prompt.value: "encoding the prompt",
    Stage.denoising.value: "denoising",
    Stage.decoding.value: "decoding",
    Stage.encoding_video.value: "encoding the video",
    Stage.uploading.value: "writing the file",
}


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


class GenerateDisplay:
    """A live progress display for one `generate`; use as a context manager, feed it `on_progress`."""

    def __init__(self, console: Console, loading: str = LABELS[LOADING]) -> None:
        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self.task = self.progress.add_task(loading, total=100)
        self.stage = LOADING
        self.stage_started = time.monotonic()

    def __enter__(self) -> GenerateDisplay:
        self.progress.start()
        self.progress.refresh()
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is not None:  # a failure: the one error line says what happened, no half-full bar above it
            self.progress.live.transient = True
        self.progress.stop()

    def on_progress(self, current: JobProgress) -> None:
        """A runner listener: called at every stage change and after every denoising step."""
        stage = current.stage.value
        if stage != self.stage:
            self._finish_stage()
            self.stage = stage
        description = LABELS.get(stage, stage)
        if current.stage is Stage.denoising and current.total_steps:
            description += f" · step {current.step or 0}/{current.total_steps}"
        # refresh=True draws every step: a tiny job's steps are faster than rich's refresh rate.
        self.progress.update(self.task, description=description, completed=current.progress * 100, refresh=True)

    def done(self) -> None:
        self._finish_stage()
        self.progress.update(self.task, description="done", completed=100, refresh=True)

    def _finish_stage(self) -> None:
        now = time.monotonic()
        self.progress.console.print(
            f"[green]✓[/] {LABELS.get(self.stage, self.stage)}  {_seconds(now - self.stage_started)}"
        )
        self.stage_started = now


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def _rows(rows: list[tuple[str, str]]) -> list[str]:
    """Aligned `label  value` lines; printed with soft wrap, so a long path is never cut or broken."""
    width = max(len(label) for label, _ in rows)
    return [f"[bold]{label:<{width}}[/]  {escape(value)}" for label, value in rows]


def summary(result: JobResult, out: Path, load_s: float | None = None) -> list[str]:
    """The closing lines of a `generate`: file, size, duration, resolution, seed, timings."""
    kind = "image-to-video" if result.mode == "i2v" else "text-to-video"
    t = result.timings
    parts = [("model load", load_s)] if load_s is not None else []
    parts += [("image", t.download_s)] if result.mode == "i2v" else []
    parts += [("generation", t.inference_s), ("encode", t.encode_s), ("write", t.upload_s), ("job total", t.total_s)]
    return _rows(
        [
            ("video", f"{out}  ({decimal(result.bytes)})"),
            (
                "duration",
                f"{result.num_frames / result.fps:.2f} s  ({result.num_frames} frames ÷ {result.fps} fps), {kind}",
            ),
            ("resolution", f"{result.width}×{result.height}"),
            ("seed", str(result.seed)),
            ("timings", " · ".join(f"{name} {_seconds(value)}" for name, value in parts if value is not None)),
        ]
    )


def model_summary(model_id: str, folder: Path, size_bytes: int, files: int) -> list[str]:
    """The closing lines of a `download-model`: where the weights are and how big they are."""
    return _rows([("model", model_id), ("folder", str(folder)), ("size", f"{decimal(size_bytes)} in {files} files")])


def print_lines(console: Console, lines: list[str]) -> None:
    for line in lines:
        console.print(line, soft_wrap=True)
