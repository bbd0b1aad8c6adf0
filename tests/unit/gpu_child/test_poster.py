"""The poster: the middle frame, picked while the frames stream to the encoder, as a small JPEG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from worker_app_fastwan.gpu_child.poster import MAX_WIDTH, PosterFrame, write_poster


def frames(n: int, height: int, width: int) -> np.ndarray:
    """Frame i is filled with the value i: which frame was kept can be read back from the poster."""
    return np.repeat(np.arange(n, dtype=np.uint8)[:, None, None, None], height * width * 3).reshape(n, height, width, 3)


def test_the_middle_frame_is_kept_whatever_the_chunks() -> None:
    video = frames(121, 8, 8)
    for size in (1, 4, 7, 121):
        picked = PosterFrame(121)
        for start in range(0, 121, size):
            picked.offer(video[start : start + size])
        assert picked.frame is not None and int(picked.frame[0, 0, 0]) == 60, size
        assert picked.frame.base is None, "a copy: the chunk itself is not kept"


def test_a_shorter_video_than_announced_keeps_its_last_frame() -> None:
    picked = PosterFrame(121)
    picked.offer(frames(9, 4, 4)[:5])
    assert picked.frame is not None and int(picked.frame[0, 0, 0]) == 4


def test_the_poster_is_a_small_decodable_jpeg_at_most_640_wide(tmp_path: Path) -> None:
    y, x = np.mgrid[0:704, 0:1280].astype(np.float32)
    scene = np.stack([np.sin(x / 90) * 90 + 120, np.cos(y / 70) * 80 + 110, (x + y) / 2000 * 200], -1)
    size = write_poster(scene.clip(0, 255).astype(np.uint8), tmp_path / "p.jpg")
    data = (tmp_path / "p.jpg").read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.format == "JPEG" and image.size == (MAX_WIDTH, 352)
    assert size == len(data) < 40_000  # "a few tens of KB" at 1280x704
    small = write_poster(frames(1, 256, 256)[0], tmp_path / "s.jpg")
    with Image.open(tmp_path / "s.jpg") as image:
        assert image.size == (256, 256) and small > 0  # never enlarged
