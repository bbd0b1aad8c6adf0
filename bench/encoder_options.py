"""Encoder presets side by side with `imageio.mimsave` defaults: time, size and PSNR, on noisy and clean content.

    .venv/bin/python bench/encoder_options.py
How the default ENCODER_PRESET / ENCODER_CRF was chosen (BENCHMARKS.md).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import imageio
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.video import read_video  # noqa: E402

from worker_app_fastwan.gpu_child.encoder import encode_mp4  # noqa: E402

OPTIONS = [("veryfast", 25), ("superfast", 25), ("superfast", 27), ("veryfast", 27), ("ultrafast", 25)]


def frames(noise_sigma: float, n: int = 121, height: int = 704, width: int = 1280) -> np.ndarray:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        rgb = np.stack([np.sin((x + 8 * i) / 60), np.sin((y + 5 * i) / 45), np.sin((x + y + 10 * i) / 80)], -1)
        out[i] = np.clip(128 + 100 * rgb + rng.normal(0, noise_sigma, rgb.shape), 0, 255)
    return out


def psnr(path: Path, source: np.ndarray) -> float:
    back, _ = read_video(path)
    mse = np.mean((back.astype(np.float32) - source.astype(np.float32)) ** 2)
    return round(float(10 * np.log10(255**2 / mse)), 2)


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    for label, sigma in (("moving gradients + noise", 8.0), ("moving gradients, no noise", 0.0)):
        source = frames(sigma)
        start = time.perf_counter()
        imageio.mimsave(tmp / "m.mp4", list(source), fps=24)
        base_s, base_b = time.perf_counter() - start, (tmp / "m.mp4").stat().st_size
        print(f"\n{label}: mimsave {base_s:.2f} s, {base_b / 2**20:.2f} MiB, PSNR {psnr(tmp / 'm.mp4', source)} dB")
        chunks = [source[i : i + 4] for i in range(0, len(source), 4)]
        for preset, crf in OPTIONS:
            start = time.perf_counter()
            encode_mp4(chunks, tmp / "p.mp4", 1280, 704, 24, preset=preset, crf=crf)
            took, size = time.perf_counter() - start, (tmp / "p.mp4").stat().st_size
            print(
                f"  {preset:9s} crf {crf}: {base_s / took:4.1f}x faster, size {size / base_b:4.2f}x, "
                f"PSNR {psnr(tmp / 'p.mp4', source)} dB"
            )


if __name__ == "__main__":
    main()
