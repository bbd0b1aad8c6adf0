"""The streaming MP4 encoder (imageio-ffmpeg's bundled ffmpeg)."""

from __future__ import annotations

import numpy as np
import pytest
from support.video import read_video

from worker_app_fastwan.gpu_child.encoder import EncodeError, Mp4Writer, encode_mp4


def _moving(n: int, h: int = 96, w: int = 128) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    frames = [np.stack([(x + 6 * i) % 256, (y + 3 * i) % 256, np.full_like(x, 128)], -1) for i in range(n)]
    return np.asarray(frames, dtype=np.uint8)


def test_h264_yuv420p_faststart_with_the_jobs_fps(tmp_path):
    out = tmp_path / "a.mp4"
    frames = _moving(17)
    count = encode_mp4([frames[:1], frames[1:9], frames[9:]], out, 128, 96, 30, crf=10)
    back, meta = read_video(out)
    assert count == 17 and back.shape == (17, 96, 128, 3)
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p") and meta["fps"] == 30
    data = out.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat"), "+faststart puts the index first"
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 6, "the pictures survive the encode"


def test_wrong_frame_shape_is_refused_and_abort_removes_the_file(tmp_path):
    out = tmp_path / "b.mp4"
    writer = Mp4Writer(out, 128, 96, 24)
    writer.write(_moving(2))
    with pytest.raises(EncodeError, match="expected uint8"):
        writer.write(np.zeros((2, 64, 64, 3), np.uint8))
    writer.abort()
    assert not out.exists()


def test_ffmpeg_failure_is_an_encode_error(tmp_path):
    writer = Mp4Writer(tmp_path / "missing-dir" / "c.mp4", 128, 96, 24)
    with pytest.raises(EncodeError, match="ffmpeg"):
        writer.write(_moving(4))
        writer.close()


def test_encoder_choice_falls_back_to_libx264_without_nvenc():
    from worker_app_fastwan.gpu_child.encoder import X264, nvenc_works, resolve_codec

    assert resolve_codec("libx264") == X264
    if nvenc_works():  # a machine with an NVENC GPU: auto takes it
        assert resolve_codec("auto") == "h264_nvenc"
        return
    assert resolve_codec("auto") == X264
    with pytest.raises(EncodeError, match="ENCODER=h264_nvenc"):
        resolve_codec("h264_nvenc")
