"""Reading videos back and making test images."""

from __future__ import annotations

import io
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from PIL import Image


def read_video(path: Path | str) -> tuple[np.ndarray, dict]:
    """All frames (F, H, W, 3) uint8 and the container metadata, through imageio's ffmpeg reader."""
    with imageio.get_reader(str(path), format="ffmpeg") as reader:
        meta = reader.get_meta_data()
        frames = np.stack([frame for frame in reader])
    return frames, meta


def gradient_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth picture with some structure (not flat: a flat image hides conditioning bugs)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 255
    noise = rng.normal(0, 12, base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
