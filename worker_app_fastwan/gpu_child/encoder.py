"""Frames -> H.264 MP4 (yuv420p, +faststart) through imageio-ffmpeg's bundled ffmpeg.

Frames are streamed: each decoded chunk goes to a writer thread that pipes raw RGB into ffmpeg, so
encoding runs while the VAE decodes the next chunk and no whole-video array is ever built.
"""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import imageio_ffmpeg
import numpy as np

DEFAULT_PRESET = "superfast"
DEFAULT_CRF = 27
NVENC = "h264_nvenc"
X264 = "libx264"
_STOP = object()


def codec_args(codec: str, preset: str, crf: int) -> list[str]:
    """NVENC takes its own presets (p1 fastest … p7 best) and a constant-quality `-cq` instead of CRF."""
    if codec == NVENC:
        return ["-c:v", NVENC, "-preset", "p4", "-rc", "vbr", "-cq", str(crf), "-b:v", "0"]
    return ["-c:v", X264, "-preset", preset, "-crf", str(crf)]


def nvenc_works() -> bool:
    """Whether this machine can encode with NVENC: the bundled ffmpeg has it, but only some GPUs do
    (consumer RTX, L4, L40S; not H100 or A100). A two-frame trial encode tells."""
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-hide_banner",
        "-loglevel",
        "error",
        "-f",
        "lavfi",
        "-i",
        "color=c=gray:s=256x256:d=0.1",
        "-frames:v",
        "2",
        *codec_args(NVENC, "", DEFAULT_CRF),
        "-f",
        "null",
        "-",
    ]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def resolve_codec(requested: str) -> str:
    """`ENCODER`: auto → NVENC where it works, else libx264; an explicit NVENC that cannot work is an error."""
    if requested == "auto":
        return NVENC if nvenc_works() else X264
    if requested == NVENC and not nvenc_works():
        raise EncodeError("ENCODER=h264_nvenc: this machine cannot encode with NVENC; use ENCODER=auto or libx264")
    return requested


class EncodeError(RuntimeError):
    pass


class Mp4Writer:
    """Write uint8 (n, H, W, 3) chunks with `write()`; `close()` waits for ffmpeg and returns the tail time."""

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        fps: int,
        *,
        preset: str = DEFAULT_PRESET,
        crf: int = DEFAULT_CRF,
        codec: str = X264,
        max_queued_chunks: int = 4,
    ) -> None:
        self.path, self.width, self.height = Path(path), width, height
        self.frames_written = 0
        cmd = [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            f"{width}x{height}",
            "-r",
            str(fps),
            "-i",
            "-",
            "-an",
            *codec_args(codec, preset, crf),
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
            str(self.path),
        ]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queued_chunks)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._pump, name="mp4-writer", daemon=True)
        self._thread.start()

    def write(self, chunk: np.ndarray) -> None:
        if chunk.dtype != np.uint8 or chunk.ndim != 4 or chunk.shape[1:] != (self.height, self.width, 3):
            raise EncodeError(
                f"expected uint8 (n, {self.height}, {self.width}, 3) frames, got {chunk.dtype} {chunk.shape}"
            )
        if self._error is not None:
            raise EncodeError(f"ffmpeg failed: {self._stderr()}") from self._error
        self._queue.put(np.ascontiguousarray(chunk))
        self.frames_written += chunk.shape[0]

    def close(self) -> float:
        """Finish the file; returns the seconds spent after the last frame was handed over."""
        start = time.perf_counter()
        self._queue.put(_STOP)
        self._thread.join()
        code = self._proc.wait()
        if self._error is not None or code != 0:
            raise EncodeError(f"ffmpeg exited with code {code}: {self._stderr()}")
        return time.perf_counter() - start

    def abort(self) -> None:
        """Stop ffmpeg and drop the partial file (a cancelled or failed job)."""
        self._proc.kill()
        self._drain_queue()
        self._queue.put(_STOP)
        self._thread.join(timeout=5)
        self._proc.wait()
        self.path.unlink(missing_ok=True)

    def _pump(self) -> None:
        # The pipe write releases the GIL, so ffmpeg encodes while the caller keeps decoding.
        assert self._proc.stdin is not None
        try:
            while (item := self._queue.get()) is not _STOP:
                if self._error is None:
                    self._proc.stdin.write(memoryview(item).cast("B"))  # type: ignore[arg-type]
        except (BrokenPipeError, OSError) as exc:
            self._error = exc
            self._drain_until_stop()
        finally:
            try:
                self._proc.stdin.close()
            except OSError:
                pass

    def _drain_until_stop(self) -> None:
        while self._queue.get() is not _STOP:
            pass

    def _drain_queue(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def _stderr(self) -> str:
        if self._proc.stderr is None or self._proc.poll() is None:
            return "(still running)"
        return self._proc.stderr.read().decode(errors="replace").strip()[-500:]


def encode_mp4(frames: Iterable[np.ndarray], path: Path, width: int, height: int, fps: int, **options: object) -> int:
    """Encode an iterable of frame chunks; returns the frame count. For callers with no overlap to gain."""
    writer = Mp4Writer(path, width, height, fps, **options)  # type: ignore[arg-type]
    try:
        for chunk in frames:
            writer.write(chunk)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return writer.frames_written
