"""Contact sheets: a video as one PNG strip of evenly spaced frames, to see at a glance what it shows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

GAP = 4  # pixels of dark grey between frames
GAP_COLOUR = (60, 60, 60)


def read_frames(path: Path) -> np.ndarray:
    """All frames of an MP4 (F, H, W, 3) uint8, decoded by the ffmpeg that imageio-ffmpeg bundles."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(buf, np.uint8).reshape(height, width, 3) for buf in reader]
    return np.stack(frames)


def pick(num_frames: int, count: int) -> list[int]:
    """`count` frame indices from the first to the last, evenly spaced."""
    count = max(1, min(count, num_frames))
    return sorted({round(i * (num_frames - 1) / max(1, count - 1)) for i in range(count)})


def contact_sheet(frames: np.ndarray, count: int = 6, height: int | None = None) -> Image.Image:
    """A strip of `count` frames (first to last) side by side; `height` rescales each frame to it."""
    tiles = [Image.fromarray(frames[i]) for i in pick(len(frames), count)]
    if height is not None:
        tiles = [t.resize((round(t.width * height / t.height), height), Image.Resampling.LANCZOS) for t in tiles]
    width = sum(t.width for t in tiles) + GAP * (len(tiles) - 1)
    sheet = Image.new("RGB", (width, tiles[0].height), GAP_COLOUR)
    x = 0
    for tile in tiles:
        sheet.paste(tile, (x, 0))
        x += tile.width + GAP
    return sheet


def save_contact_sheet(video: Path, out: Path | None = None, count: int = 6) -> Path:
    """The sheet of an MP4, saved beside it (`clip.mp4` -> `clip.png`) unless `out` says where."""
    out = out or video.with_suffix(".png")
    contact_sheet(read_frames(video), count).save(out, optimize=True)
    return out
