"""The poster: a JPEG of the frame in the middle of the video, written beside the MP4 in the GPU child.

The frames stream past on their way to the encoder (`encoder.Mp4Writer`); `PosterFrame` keeps one of them
(a copy of that one frame, never the video), and `write_poster` makes the JPEG once the MP4 is written. At
most `MAX_WIDTH` pixels wide (640x352 for 1280x704): a tile or a player's poster, a few tens of KB. A poster
is worth little next to the video: one that fails is logged and left out, never the job's failure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAX_WIDTH = 640
QUALITY = 80


class PosterFrame:
    """Picks frame `total // 2` out of the chunks it is shown, or the last one if the video is shorter."""

    def __init__(self, total_frames: int) -> None:
        self.index = max(total_frames, 1) // 2
        self.seen = 0
        self.frame: np.ndarray | None = None
        self._picked = False

    def offer(self, chunk: np.ndarray) -> None:
        """A uint8 (n, H, W, 3) chunk, as the encoder gets it."""
        n = chunk.shape[0]
        if n and not self._picked:
            inside = self.seen <= self.index < self.seen + n
            # A copy of one frame, so the chunk itself can go (the encoder's queue holds its own reference).
            self.frame = np.array(chunk[self.index - self.seen if inside else n - 1])
            self._picked = inside
        self.seen += n


def write_poster(frame: np.ndarray, path: Path, *, max_width: int = MAX_WIDTH, quality: int = QUALITY) -> int:
    """Write `frame` (H, W, 3 uint8) as a JPEG at most `max_width` wide; returns its size in bytes."""
    from PIL import Image

    image = Image.fromarray(frame)
    if image.width > max_width:
        height = max(1, round(image.height * max_width / image.width))
        image = image.resize((max_width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)
    image.save(path, "JPEG", quality=quality, optimize=True)
    return path.stat().st_size
